//! Variants in the API: as an admin asks for them, and each one's counters in a sale's views.

use poem_openapi::Object;

use crate::api::strict::StrictString;
use crate::domain::{NewVariant, Variant};

/// One variant of a new sale.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct VariantRequest {
    /// The variant's code, unique in the sale: 1-32 of letters, digits, `-`, `_`, `.`, `/`
    /// (a size: `42`, `XL`, `10.5`). Duplicates are 400 `DUPLICATE_VARIANT`.
    #[oai(validator(min_length = 1, max_length = 32, pattern = r"^[A-Za-z0-9._/-]+$"))]
    pub code: StrictString,
    /// Units of this variant for sale.
    #[oai(validator(minimum(value = "1"), maximum(value = "10000000")))]
    pub stock: i32,
}

impl From<VariantRequest> for NewVariant {
    fn from(request: VariantRequest) -> Self {
        NewVariant {
            code: request.code.0,
            stock: request.stock,
        }
    }
}

/// One variant of a sale and its counters (the sale's counters are their sums).
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct VariantView {
    pub code: String,
    pub stock: i32,
    /// Units of this variant nobody has bought or holds.
    pub available: i32,
    pub held: i32,
    pub sold: i32,
    /// Nothing of this variant available, and nothing held that could come back.
    pub sold_out: bool,
}

impl From<&Variant> for VariantView {
    fn from(variant: &Variant) -> Self {
        Self {
            code: variant.code.clone(),
            stock: variant.stock,
            available: variant.available,
            held: variant.held,
            sold: variant.sold,
            sold_out: variant.is_sold_out(),
        }
    }
}
