#!/usr/bin/env python3
"""The import graph of src/: no cycle, no upward import, no route importing a worker.

Usage: scripts/import-graph.py [--edges] [SRC]   (SRC: the src/ beside scripts/ by default)

Exits 1 on any violation, 0 otherwise. Python 3.11 standard library only; reads the source
text, no compiler needed, so it runs in well under a second.

What counts as a module. Every .rs file is one: `src/lib.rs` is the crate root,
`src/foo.rs` or `src/foo/mod.rs` is `foo`, and `src/foo/bar.rs` is `foo::bar`, a child of
`foo` (a `foo.rs` with a `foo/` folder holds its children there). Inline `mod tests { .. }`
blocks belong to their file. `src/main.rs` is the binary: its `flashsale::` paths are the
library's `crate::` paths.

What counts as an import. Every path that starts with `crate::`, `$crate::`, `super::` or
`self::`, in a `use` tree or written inline in the code (comments and string literals are
skipped), and a `use` of a child module by its bare name. A path names the deepest module
it reaches; when it goes on through a name that module merely imports (`pub use
jobs::JobKind` in store/mod.rs, or a private `use` that children reach through `super::`),
the import is followed to the module that defines the name. Test modules count too.

Cycles. A parent and its own descendants may use each other freely: a module with
children is one unit to the rest of the crate, and its children are its parts. Every other
import A -> B is an arrow between the two siblings under their nearest common ancestor that
contain A and B (store/sales/ending.rs -> store/queue_tick.rs is the arrow sales ->
queue_tick among store's children). Among each set of siblings the arrows must not form a
cycle.

Layers. Among the crate's top-level modules, arrows run downwards only: a module imports
only modules on a lower layer, never one on its own layer or above. LAYERS below lists
them from the top, each with why it sits there. A route importing a worker (`api` ->
`worker`) is named as such: the live hub and the runner's health live in `live` and
`status` so that routes reach them without a worker.

Not seen (no compiler here): a method called on a type whose `impl` block is in another
file. The store's `impl Store` is spread over store/'s files, so `self.sale_by_id(..)` in
store/queue.rs is a call into store/sales.rs that no path names.
"""

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

# The layers from the top (the README's "Layout" and lib.rs's tour). A module on a layer
# imports only modules on the layers below it; two modules on one layer import neither
# each other. Every top-level module of src/ must be listed.
LAYERS = [
    # The binary: its command line and subcommands.
    ["main"],
    # The composition root: builds and runs everything from the configuration.
    ["app"],
    # The outer layers, peers that never import each other: HTTP routes, background work.
    ["api", "worker"],
    # Services that both routes and workers use: the live hub's fan-out, the runner's
    # heartbeat that /health reads.
    ["live", "status"],
    # Every SQL statement; the private Postgres cluster.
    ["store", "embedded_pg"],
    # Plain types and rules; the Prometheus registry every layer counts in.
    ["domain", "metrics"],
    # Logging set-up and its throttle.
    ["telemetry"],
    # The environment and the command line, read into plain settings.
    ["config"],
]

ROOT = ()
BIN = ("main",)

LITERAL = re.compile(
    r"//[^\n]*"  # a line comment
    r"|/\*"  # a block comment (they nest: scanned below)
    r"|(?<!\w)b?r(#*)\".*?\"\1"  # a raw string
    r"|(?<!\w)b?\"(?:[^\"\\]|\\.)*\""  # a string
    r"|'(?:\\(?:u\{[0-9a-fA-F]+\}|x..|.)|[^\\'\n])'",  # a char literal (not a lifetime)
    re.S,
)


def strip(text):
    """The text with comments and string and char literals blanked out (newlines kept, so
    offsets and line numbers stay right)."""
    out, i = [], 0
    while m := LITERAL.search(text, i):
        end = m.end()
        if m.group(0) == "/*":
            depth = 1
            while depth and end < len(text):
                marks = [k for k in (text.find("/*", end), text.find("*/", end)) if k >= 0]
                nxt = min(marks, default=len(text))
                depth += 1 if text.startswith("/*", nxt) else -1
                end = nxt + 2
        out += [text[i : m.start()], re.sub(r"[^\n]", " ", text[m.start() : end])]
        i = end
    out.append(text[i:])
    return "".join(out)


TOKEN = re.compile(r"\s*(::|\{|\}|,|\*|\$?\w+)")


def use_paths(tree):
    """Expand a use tree into (segments, bound name or '*'), e.g. `super::{a, b::{self as c}}`
    gives (['super', 'a'], 'a') and (['super', 'b'], 'c')."""
    tokens = [m.group(1) for m in TOKEN.finditer(tree)]
    pos = 0

    def parse(prefix):
        nonlocal pos
        path = list(prefix)
        if pos < len(tokens) and tokens[pos] == "::":
            pos += 1
        while pos < len(tokens):
            tok = tokens[pos]
            if tok == "{":
                pos += 1
                found = []
                while pos < len(tokens) and tokens[pos] != "}":
                    if tokens[pos] == ",":
                        pos += 1
                        continue
                    found += parse(path)
                pos += 1
                return found
            if tok == "*":
                pos += 1
                return [(path, "*")]
            pos += 1
            if tok == "self":
                if not path:  # `use self::x` (a relative path), not `{self}`
                    path.append(tok)
                    if pos < len(tokens) and tokens[pos] == "::":
                        pos += 1
                    continue
                name = path[-1]
            else:
                path.append(tok)
                name = tok
            if pos < len(tokens) and tokens[pos] == "as":
                name = tokens[pos + 1]
                pos += 2
            if pos < len(tokens) and tokens[pos] == "::":
                pos += 1
                continue
            return [(path, name)]
        return [(path, path[-1] if path else "*")]

    return parse([])


ITEM = re.compile(
    r"\b(?:struct|enum|fn|const|static|type|trait|union|mod|macro_rules!)\s+(\w+)"
)
USE = re.compile(r"\buse\s+([^;]*);")
INLINE = re.compile(r"(?<![\w:])(\$?crate|super|self|flashsale)((?:::\w+)+)")
INLINE_MOD = re.compile(r"\bmod\s+\w+\s*\{")


class File:
    def __init__(self, path, module, text):
        self.path, self.module = path, module
        self.text = strip(text)
        self.lines = [0] + [m.end() for m in re.finditer("\n", self.text)]
        # Inline modules: (start, end) offsets, so `super::` inside one stays in the file.
        self.blocks = []
        for m in INLINE_MOD.finditer(self.text):
            depth, j = 0, m.end() - 1
            while j < len(self.text):
                depth += {"{": 1, "}": -1}.get(self.text[j], 0)
                if depth == 0:
                    break
                j += 1
            self.blocks.append((m.start(), j))
        self.uses = [
            (m.start(), segs, name)
            for m in USE.finditer(self.text)
            for segs, name in use_paths(m.group(1))
        ]
        top = [(o, s, nm) for o, s, nm in self.uses if self.depth(o) == 0]
        self.imports = {nm: (o, s) for o, s, nm in top if nm != "*"}
        self.globs = [(o, s) for o, s, nm in top if nm == "*"]
        self.defines = {
            m.group(1) for m in ITEM.finditer(self.text) if self.depth(m.start()) == 0
        }

    def depth(self, offset):
        return sum(a <= offset <= b for a, b in self.blocks)

    def line(self, offset):
        lo, hi = 0, len(self.lines) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.lines[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1


class Crate:
    def __init__(self, src):
        self.files = {}
        for path in sorted(src.rglob("*.rs")):
            rel = path.relative_to(src).with_suffix("")
            parts = rel.parts
            if parts == ("lib",):
                module = ROOT
            elif parts == ("main",):
                module = BIN
            elif parts[-1] == "mod":
                module = parts[:-1]
            else:
                module = parts
            shown = f"src/{path.relative_to(src)}"
            self.files[module] = File(shown, module, path.read_text())

    def absolute(self, f, offset, segs):
        """The crate path of `segs` as written in file f at offset, or None (another crate)."""
        head, rest = segs[0], list(segs[1:])
        here = ROOT if f.module == BIN else f.module
        if head in ("crate", "$crate") or head == "flashsale" and f.module == BIN:
            return rest
        if head == "self":
            return list(here) + rest
        if head == "super":
            ups = 1
            while rest and rest[0] == "super":
                ups, rest = ups + 1, rest[1:]
            ups -= min(ups, f.depth(offset))
            return list(here[: len(here) - ups]) + rest
        if here + (head,) in self.files:
            return list(here) + list(segs)
        if head in f.imports and f.imports[head][1] != list(segs[:1]):
            o, target = f.imports[head]
            base = self.absolute(f, o, target)
            return None if base is None else base + rest
        return None

    def resolve(self, segs, seen=()):
        """The module (file) that defines what the crate path `segs` names."""
        cur = ROOT
        for i, seg in enumerate(segs):
            if cur + (seg,) in self.files:
                cur += (seg,)
                continue
            f = self.files[cur]
            if seg in f.defines or (cur, seg) in seen:
                return cur
            seen = seen + ((cur, seg),)
            if seg in f.imports:
                o, target = f.imports[seg]
                path = self.absolute(f, o, target)
                return cur if path is None else self.resolve(path + segs[i + 1 :], seen)
            for o, target in f.globs:
                path = self.absolute(f, o, target)
                if path is None:
                    continue
                g = self.resolve(path, seen)
                if seg in self.files[g].defines or seg in self.files[g].imports:
                    return self.resolve(path + segs[i:], seen)
            return cur
        return cur

    def edges(self):
        """Every import between two different files: (from, to, file, line, path)."""
        found = set()
        for f in self.files.values():
            refs = [(o, s) for o, s, _ in f.uses]
            uses = [(m.start(), m.end()) for m in USE.finditer(f.text)]
            for m in INLINE.finditer(f.text):
                if not any(a <= m.start() < b for a, b in uses):
                    refs.append((m.start(), [m.group(1)] + m.group(2)[2:].split("::")))
            for offset, segs in refs:
                path = self.absolute(f, offset, segs)
                if path is None:
                    continue
                to = self.resolve(path)
                if to != f.module and not (f.module == BIN and to == ROOT):
                    found.add((f.module, to, f.path, f.line(offset), "::".join(segs)))
        return sorted(found, key=lambda e: (e[2], e[3], e[4]))


def name(module):
    return "::".join(module) if module else "crate"


def cycles(edges):
    """Cycles among siblings: (parent, [a, b, .., a], an import for each arrow, the knot's
    other members). One shortest cycle per knot (strongly connected set) is shown."""
    graphs = defaultdict(lambda: defaultdict(dict))
    for a, b, *where in sorted(edges, key=lambda e: (e[2], e[3])):
        if BIN in (a, b):
            continue
        common = 0
        while common < min(len(a), len(b)) and a[common] == b[common]:
            common += 1
        if common in (len(a), len(b)):
            continue  # a parent and its own descendant
        arrows = graphs[a[:common]][a[: common + 1]]
        arrows.setdefault(b[: common + 1], (a, b, *where))
    found = []
    for parent, graph in sorted(graphs.items()):
        for knot in strongly_connected(graph):
            if len(knot) > 1:
                start = min(knot)
                paths, todo = {start: [start]}, [start]
                while start not in paths or len(paths[start]) == 1:
                    v = todo.pop(0)
                    for w in sorted(graph[v]):
                        if w in knot and (w not in paths or w == start):
                            paths[w] = paths[v] + [w]
                            todo.append(w)
                cycle = paths[start]
                imports = [graph[v][w] for v, w in zip(cycle, cycle[1:])]
                found.append((parent, cycle, imports, sorted(knot - set(cycle))))
    return found


def strongly_connected(graph):
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = set()
            while True:
                w = stack.pop()
                on.discard(w)
                scc.add(w)
                if w == v:
                    break
            out.append(scc)

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default_src = Path(__file__).resolve().parent.parent / "src"
    parser.add_argument("src", nargs="?", type=Path, default=default_src)
    parser.add_argument("--edges", action="store_true", help="list every import between files")
    args = parser.parse_args()
    crate = Crate(args.src)
    edges = crate.edges()
    layer = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    tops = {m[0] for m in crate.files if m}
    problems = [
        f"src/{m}: a top-level module on no layer (add it to LAYERS)"
        for m in sorted(tops - layer.keys())
    ]

    if args.edges:
        for a, b, path, line, text in edges:
            print(f"{path}:{line}: {name(a)} -> {name(b)} ({text})")

    for parent, cycle, imports, others in cycles(edges):
        text = f"a cycle among {name(parent)}'s children: {' -> '.join(m[-1] for m in cycle)}"
        for _, b, path, line, what in imports:
            text += f"\n  {path}:{line}: imports {name(b)} ({what})"
        if others:
            text += f"\n  (in a knot with {', '.join(m[-1] for m in others)})"
        problems.append(text)

    for a, b, path, line, text in edges:
        if not a or not b or a[0] == b[0] or a[0] not in layer or b[0] not in layer:
            continue
        if a[0] == "api" and b[0] == "worker":
            problems.append(f"{path}:{line}: a route imports a worker: {text}")
        elif layer[a[0]] == layer[b[0]]:
            problems.append(f"{path}:{line}: {a[0]} imports {b[0]}, its peer on one layer: {text}")
        elif layer[a[0]] > layer[b[0]]:
            problems.append(f"{path}:{line}: {a[0]} imports {b[0]}, a layer above it: {text}")

    for p in problems:
        print(p)
    arrows = {(a, b) for a, b, *_ in edges}
    print(
        f"import graph: {len(crate.files)} files, {len(arrows)} arrows between them "
        f"({len(edges)} paths), {len(problems)} violation(s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
