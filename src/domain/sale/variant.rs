//! Variants: sizes (or colours, seats...) of one drop, each with its own stock, under the
//! sale's window, checkout and per-customer limit. The sale's counters are their sums.

/// Most variants one sale may have.
pub const MAX_VARIANTS: usize = 100;

/// One variant of a sale as stored, with its counters (read with the sale's).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Variant {
    /// 1, 2, 3 ... in the order the admin gave them.
    pub position: i16,
    pub code: String,
    pub stock: i32,
    pub available: i32,
    pub held: i32,
    pub sold: i32,
}

impl Variant {
    /// Nothing of this variant left to sell, and nothing held that could come back.
    pub fn is_sold_out(&self) -> bool {
        self.available == 0 && self.held == 0
    }
}

/// A variant an admin asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVariant {
    pub code: String,
    pub stock: i32,
}

/// Whether `code` is a valid variant code: 1 to 32 letters, digits, `-`, `_`, `.` or `/`
/// (sizes like `42`, `XL`, `10.5`, `M/L`).
pub fn valid_variant_code(code: &str) -> bool {
    (1..=32).contains(&code.len())
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}
