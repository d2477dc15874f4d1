//! Whether a tensor's bytes hold numbers: every element of a float tensor finite, every
//! quantization block's scale finite. A NaN or infinite block scale in a quantized matrix does
//! not show in the logits: ggml quantizes the next matmul's activations to 8 bits, which turns
//! NaN into ordinary numbers, so a corrupt file would run and print plausible-looking garbage.
//! The same checks as ggml's `ggml_validate_row_data` (llama.cpp's `--check-tensors`), on the
//! mapped bytes, without the backend.

use rayon::prelude::*;

use super::GgmlType;

/// How one scale field of a block is stored.
#[derive(Clone, Copy)]
enum Field {
    F16,
    F32,
    /// MXFP4's shared exponent (E8M0): 0xFF is its NaN.
    E8m0,
    /// IQ1_M's f16 scale, spread over the top nibbles of the four u16 at this offset.
    Iq1m,
}

/// The scale fields of one block of `t`: (byte offset in the block, storage, name), or `None`
/// for types without a floating-point scale (integers).
fn scale_fields(t: GgmlType) -> Option<&'static [(usize, Field, &'static str)]> {
    use Field::*;
    use GgmlType as T;
    const D0: &[(usize, Field, &str)] = &[(0, F16, "scale")];
    const D0_M2: &[(usize, Field, &str)] = &[(0, F16, "scale"), (2, F16, "minimum")];
    Some(match t {
        T::Q4_0 | T::Q5_0 | T::Q8_0 | T::IQ4_NL | T::IQ4_XS | T::IQ2_XXS | T::IQ2_XS | T::IQ2_S | T::IQ3_XXS | T::IQ3_S | T::IQ1_S => D0,
        T::Q4_1 | T::Q5_1 | T::Q8_1 | T::Q4_K | T::Q5_K => D0_M2,
        T::Q2_K => &[(80, F16, "scale"), (82, F16, "minimum")],
        T::Q3_K => &[(108, F16, "scale")],
        T::Q6_K => &[(208, F16, "scale")],
        T::Q8_K => &[(0, F32, "scale")],
        T::TQ1_0 => &[(52, F16, "scale")],
        T::TQ2_0 => &[(64, F16, "scale")],
        T::IQ1_M => &[(48, Iq1m, "scale")],
        T::MXFP4 => &[(0, E8m0, "exponent")],
        T::F32 | T::F16 | T::BF16 | T::F64 | T::I8 | T::I16 | T::I32 | T::I64 => return None,
    })
}

fn f16_bad(h: u16) -> bool {
    h & 0x7c00 == 0x7c00
}

fn f16_text(h: u16) -> &'static str {
    match (h & 0x3ff != 0, h & 0x8000 != 0) {
        (true, _) => "NaN",
        (false, false) => "+inf",
        (false, true) => "-inf",
    }
}

fn f32_text(x: f32) -> &'static str {
    if x.is_nan() {
        "NaN"
    } else if x > 0.0 {
        "+inf"
    } else {
        "-inf"
    }
}

/// The first non-finite value of a tensor of type `t` stored as `data` (whole blocks), said
/// as "element 17 is NaN" or "block 5: scale is +inf"; `None` when every value is a number.
/// Integer tensors hold no floats and always pass.
pub fn first_non_finite(t: GgmlType, data: &[u8]) -> Option<String> {
    // Chunks of whole blocks (or elements) checked in parallel; the earliest bad one is told.
    const CHUNK: usize = 1 << 20;
    let unit = t.type_size() as usize;
    let per_chunk = (CHUNK / unit).max(1) * unit;
    let chunks: Vec<&[u8]> = data.chunks(per_chunk).collect();
    chunks.par_iter().enumerate().find_map_first(|(i, c)| check_chunk(t, c).map(|(at, what)| describe(t, i * per_chunk / unit + at, what)))
}

fn describe(t: GgmlType, at: usize, what: String) -> String {
    if scale_fields(t).is_some() {
        format!("block {at} (elements {}..{}): {what}", at as u64 * t.block_size(), (at as u64 + 1) * t.block_size())
    } else {
        format!("element {at} is {what}")
    }
}

/// The index (block or element) within `c` of its first bad value, and what it is.
fn check_chunk(t: GgmlType, c: &[u8]) -> Option<(usize, String)> {
    match t {
        GgmlType::F32 => first_bad_by(c, 4, |b| {
            let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            (!x.is_finite()).then(|| f32_text(x).to_owned())
        }),
        GgmlType::F64 => first_bad_by(c, 8, |b| {
            let x = f64::from_le_bytes(b.try_into().unwrap_or_default());
            (!x.is_finite()).then(|| f32_text(x as f32).to_owned())
        }),
        GgmlType::F16 => first_bad_by(c, 2, |b| {
            let h = u16::from_le_bytes([b[0], b[1]]);
            f16_bad(h).then(|| f16_text(h).to_owned())
        }),
        GgmlType::BF16 => first_bad_by(c, 2, |b| {
            let x = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            (!x.is_finite()).then(|| f32_text(x).to_owned())
        }),
        _ => {
            let fields = scale_fields(t)?;
            first_bad_by(c, t.type_size() as usize, |block| {
                fields.iter().find_map(|&(off, field, name)| bad_field(&block[off..], field).map(|v| format!("{name} is {v}")))
            })
        }
    }
}

/// The first unit of `c` (in `size`-byte units) for which `bad` says something. Runs of units
/// are first tested together without branching (so the common all-good case vectorizes where
/// it can), then the run that failed is searched unit by unit.
fn first_bad_by(c: &[u8], size: usize, bad: impl Fn(&[u8]) -> Option<String>) -> Option<(usize, String)> {
    const RUN: usize = 256;
    for (r, run) in c.chunks(size * RUN).enumerate() {
        let any = run.chunks_exact(size).fold(false, |acc, u| acc | bad_quick(u, size, &bad));
        if any {
            let (i, what) = run.chunks_exact(size).enumerate().find_map(|(i, u)| bad(u).map(|w| (i, w)))?;
            return Some((r * RUN + i, what));
        }
    }
    None
}

/// `bad(u).is_some()` with the common float cases spelled out so that they compile to
/// branch-free bit tests.
#[inline(always)]
fn bad_quick(u: &[u8], size: usize, bad: &impl Fn(&[u8]) -> Option<String>) -> bool {
    match size {
        2 => f16_or_bf16_maybe_bad(u16::from_le_bytes([u[0], u[1]])) && bad(u).is_some(),
        4 => u32::from_le_bytes([u[0], u[1], u[2], u[3]]) & 0x7f80_0000 == 0x7f80_0000,
        _ => bad(u).is_some(),
    }
}

/// A cheap pre-test true for every non-finite f16 and bf16 (both have their exponent's top
/// bits set); the exact test follows only when it is true.
#[inline(always)]
fn f16_or_bf16_maybe_bad(h: u16) -> bool {
    h & 0x7c00 == 0x7c00 || h & 0x7f80 == 0x7f80
}

fn bad_field(b: &[u8], field: Field) -> Option<&'static str> {
    match field {
        Field::F16 => {
            let h = u16::from_le_bytes([b[0], b[1]]);
            f16_bad(h).then(|| f16_text(h))
        }
        Field::F32 => {
            let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            (!x.is_finite()).then(|| f32_text(x))
        }
        Field::E8m0 => (b[0] == 0xff).then_some("NaN"),
        Field::Iq1m => {
            let sc = |i: usize| u16::from_le_bytes([b[2 * i], b[2 * i + 1]]);
            let h = (sc(0) >> 12) | ((sc(1) >> 8) & 0x00f0) | ((sc(2) >> 4) & 0x0f00) | (sc(3) & 0xf000);
            f16_bad(h).then(|| f16_text(h))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_bad_value_of_every_kind() {
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        assert_eq!(first_non_finite(GgmlType::F32, &f32s(&[1.0, -2.0, 0.0])), None);
        assert_eq!(first_non_finite(GgmlType::F32, &f32s(&[1.0, f32::NAN, f32::INFINITY])).as_deref(), Some("element 1 is NaN"));
        let mut big = vec![1.0f32; 3_000_000];
        big[2_999_999] = f32::NEG_INFINITY;
        big[2_500_001] = f32::INFINITY;
        assert_eq!(first_non_finite(GgmlType::F32, &f32s(&big)).as_deref(), Some("element 2500001 is +inf"));
        let f16s = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        assert_eq!(first_non_finite(GgmlType::F16, &f16s(&[0x3c00, 0x7bff, 0xfbff])), None);
        assert_eq!(first_non_finite(GgmlType::F16, &f16s(&[0x3c00, 0xfc00])).as_deref(), Some("element 1 is -inf"));
        // bf16 0x7f80 is +inf; 0x7c00 is a finite bf16 (an f16 infinity's bits).
        assert_eq!(first_non_finite(GgmlType::BF16, &f16s(&[0x7c00, 0x3f80])), None);
        assert_eq!(first_non_finite(GgmlType::BF16, &f16s(&[0x3f80, 0x7fc1])).as_deref(), Some("element 1 is NaN"));
        // Q4_0: 18-byte blocks, the f16 scale first; the quants' bytes are not floats.
        let mut q = vec![0xffu8; 18 * 4];
        for b in 0..4 {
            q[18 * b..18 * b + 2].copy_from_slice(&0x3c00u16.to_le_bytes());
        }
        assert_eq!(first_non_finite(GgmlType::Q4_0, &q), None);
        q[18 * 2..18 * 2 + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
        assert_eq!(first_non_finite(GgmlType::Q4_0, &q).as_deref(), Some("block 2 (elements 64..96): scale is NaN"));
        assert_eq!(first_non_finite(GgmlType::I32, &[0xff; 8]), None);
    }
}
