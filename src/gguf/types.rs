//! ggml tensor types as they appear in GGUF files: ids, block sizes and bytes per block.
//!
//! The reader must validate tensor sizes without calling into ggml (it is fuzzed on its own),
//! so the table lives here; a test checks it against ggml's `ggml_type_size`/`ggml_blck_size`.

use std::fmt;

/// A ggml tensor element type. The discriminant is the on-disk id.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
}

/// (type, elements per block, bytes per block), in id order.
const TABLE: &[(GgmlType, u64, u64)] = &[
    (GgmlType::F32, 1, 4),
    (GgmlType::F16, 1, 2),
    (GgmlType::Q4_0, 32, 18),
    (GgmlType::Q4_1, 32, 20),
    (GgmlType::Q5_0, 32, 22),
    (GgmlType::Q5_1, 32, 24),
    (GgmlType::Q8_0, 32, 34),
    (GgmlType::Q8_1, 32, 36),
    (GgmlType::Q2_K, 256, 84),
    (GgmlType::Q3_K, 256, 110),
    (GgmlType::Q4_K, 256, 144),
    (GgmlType::Q5_K, 256, 176),
    (GgmlType::Q6_K, 256, 210),
    (GgmlType::Q8_K, 256, 292),
    (GgmlType::IQ2_XXS, 256, 66),
    (GgmlType::IQ2_XS, 256, 74),
    (GgmlType::IQ3_XXS, 256, 98),
    (GgmlType::IQ1_S, 256, 50),
    (GgmlType::IQ4_NL, 32, 18),
    (GgmlType::IQ3_S, 256, 110),
    (GgmlType::IQ2_S, 256, 82),
    (GgmlType::IQ4_XS, 256, 136),
    (GgmlType::I8, 1, 1),
    (GgmlType::I16, 1, 2),
    (GgmlType::I32, 1, 4),
    (GgmlType::I64, 1, 8),
    (GgmlType::F64, 1, 8),
    (GgmlType::IQ1_M, 256, 56),
    (GgmlType::BF16, 1, 2),
    (GgmlType::TQ1_0, 256, 54),
    (GgmlType::TQ2_0, 256, 66),
    (GgmlType::MXFP4, 32, 17),
];

impl GgmlType {
    /// Every type this build knows, in id order.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TABLE.iter().map(|&(t, _, _)| t)
    }

    /// The type for an on-disk id, or `None` for ids that are unknown or were removed from ggml.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TABLE.iter().find(|&&(t, _, _)| t as u32 == id).map(|&(t, _, _)| t)
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    fn entry(self) -> (u64, u64) {
        let &(_, blck, size) = TABLE.iter().find(|&&(t, _, _)| t == self).expect("every variant is in TABLE");
        (blck, size)
    }

    /// Elements per quantization block (1 for plain types).
    pub fn block_size(self) -> u64 {
        self.entry().0
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.entry().1
    }

    /// Bytes of a row of `n` elements, or `None` when `n` is not a whole number of blocks
    /// or the size overflows.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let (blck, size) = self.entry();
        if n % blck != 0 {
            return None;
        }
        (n / blck).checked_mul(size)
    }

    /// Bytes of a tensor of this type with dimensions `shape` (ggml order: `shape[0]` is the row).
    pub fn tensor_bytes(self, shape: &[u64]) -> Option<u64> {
        let (first, rest) = shape.split_first()?;
        let rows = rest.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
        self.row_bytes(*first)?.checked_mul(rows)
    }

    /// Bits per weight, for summaries.
    pub fn bits_per_weight(self) -> f64 {
        let (blck, size) = self.entry();
        size as f64 * 8.0 / blck as f64
    }

    /// ggml's lower-case name ("q4_0", "f16", ...).
    pub fn name(self) -> String {
        format!("{self:?}").to_ascii_lowercase()
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_removed_ids_are_unknown() {
        for t in GgmlType::all() {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        for removed in [4, 5, 31, 32, 33, 36, 37, 38, 40, 1000] {
            assert_eq!(GgmlType::from_id(removed), None, "id {removed}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(GgmlType::Q4_0.row_bytes(4096), Some(128 * 18));
        assert_eq!(GgmlType::Q4_0.row_bytes(4095), None);
        assert_eq!(GgmlType::Q6_K.tensor_bytes(&[256, 3]), Some(630));
        assert_eq!(GgmlType::F32.tensor_bytes(&[u64::MAX, 2]), None);
        assert_eq!(GgmlType::Q8_0.bits_per_weight(), 8.5);
    }
}
