// Numbers and durations for people, shared by the report and the scenarios' debug logs.

// 1234567 -> "1,234,567".
export function int(value) {
  return String(Math.round(value)).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

// Milliseconds as k6 prints them in its own summary: 638.43µs, 104.98ms, 1.52s, 2m3s.
export function k6Duration(value) {
  if (value < 1) return `${(value * 1000).toFixed(2)}µs`;
  if (value < 1000) return `${value.toFixed(2)}ms`;
  if (value < 60000) return `${(value / 1000).toFixed(2)}s`;
  const seconds = Math.round(value / 1000);
  return `${Math.floor(seconds / 60)}m${seconds % 60}s`;
}

// Milliseconds for a person: 0.42 ms, 523 ms, 1.52 s, 2 min 3 s, 1 h 5 min.
export function formatDuration(value) {
  if (value === undefined || value === null || !Number.isFinite(value)) return '–';
  if (value < 10) return `${value.toFixed(2)} ms`;
  if (value < 1000) return `${Math.round(value)} ms`;
  if (value < 60000) return `${(value / 1000).toFixed(2)} s`;
  const seconds = Math.round(value / 1000);
  if (seconds < 3600) {
    return seconds % 60 ? `${Math.floor(seconds / 60)} min ${seconds % 60} s` : `${seconds / 60} min`;
  }
  const minutes = Math.round(seconds / 60);
  return minutes % 60 ? `${Math.floor(minutes / 60)} h ${minutes % 60} min` : `${minutes / 60} h`;
}
