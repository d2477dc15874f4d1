//! Each kernel's uniform parameters as a typed `#[repr(C)]` struct laid out exactly as the
//! `struct Params` of its WGSL source: 48 bytes of u32/f32 fields in the same order, padding
//! included. The test below reads every kernel's WGSL struct and compares it with these, field by
//! field, so a kernel and its caller cannot drift apart silently.

use bytemuck::{Pod, Zeroable};

/// A kernel's parameter block.
pub(crate) trait KernelParams: Pod {
    /// The field names, in order, as the WGSL struct names them (checked by the tests below).
    #[cfg_attr(not(test), allow(dead_code))]
    const FIELDS: &'static [&'static str];
    /// The WGSL source the struct mirrors.
    const SOURCE: &'static str;
}

/// Bytes each parameter block takes (three 16-byte rows of a uniform buffer).
pub(crate) const PARAMS_BYTES: usize = 48;

macro_rules! params {
    ($(#[$doc:meta])* $name:ident = $file:literal { $($field:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
        pub(crate) struct $name {
            $(pub $field: $ty),*
        }
        impl KernelParams for $name {
            const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];
            const SOURCE: &'static str = include_str!(concat!("../../../kernels/", $file));
        }
        const _: () = assert!(std::mem::size_of::<$name>() == PARAMS_BYTES);
    };
}

params! {
    /// `elementwise.wgsl`: y = op(a, b) over a's `[ne0, ne1, ne2]`, b broadcast along its 1s.
    Elementwise = "elementwise.wgsl" {
        ne0: u32, ne1: u32, ne2: u32, groups_x: u32,
        b0: u32, b1: u32, b2: u32, a_off: u32,
        b_off: u32, y_off: u32, _pad0: u32, _pad1: u32,
    }
}

params! {
    /// `get_rows.wgsl`: rows `ids` of a weight chunk holding rows `row0..row0 + rows`.
    GetRows = "get_rows.wgsl" {
        ne0: u32, n_ids: u32, ids_off: u32, y_off: u32,
        row0: u32, rows: u32, groups_x: u32, w_off: u32,
        w_row: u32, w_sc: u32, _pad0: u32, _pad1: u32,
    }
}

params! {
    /// `matmul.wgsl`: the tiled matmul of a weight chunk's `m` rows by `n` columns.
    MatMul = "matmul.wgsl" {
        m: u32, n: u32, k: u32, ldy: u32,
        m_base: u32, x_off: u32, y_off: u32, w_off: u32,
        w_row: u32, w_sc: u32, _pad0: u32, _pad1: u32,
    }
}

params! {
    /// `matvec.wgsl`: a workgroup per weight row, for at most 16 columns.
    MatVec = "matvec.wgsl" {
        m: u32, n: u32, k: u32, ldy: u32,
        m_base: u32, x_off: u32, y_off: u32, w_off: u32,
        w_row: u32, w_sc: u32, groups_x: u32, _pad1: u32,
    }
}

params! {
    /// `rms_norm.wgsl`: each of `rows` rows of `ne0` values.
    RmsNorm = "rms_norm.wgsl" {
        ne0: u32, rows: u32, x_off: u32, y_off: u32,
        eps: f32, groups_x: u32, _pad0: u32, _pad1: u32,
        _pad2: u32, _pad3: u32, _pad4: u32, _pad5: u32,
    }
}

params! {
    /// `row_stats.wgsl`: each of `rows` rows of `ne0` logits.
    RowStats = "row_stats.wgsl" {
        ne0: u32, rows: u32, x_off: u32, y_off: u32,
        groups_x: u32, _pad0: u32, _pad1: u32, _pad2: u32,
        _pad3: u32, _pad4: u32, _pad5: u32, _pad6: u32,
    }
}

params! {
    /// `row_candidates.wgsl`: each of `rows` rows of `ne0` logits, `k` candidates each, the
    /// inverse temperatures at `t_off` of their own binding.
    RowCandidates = "row_candidates.wgsl" {
        ne0: u32, rows: u32, x_off: u32, y_off: u32,
        groups_x: u32, k: u32, t_off: u32, _pad0: u32,
        _pad1: u32, _pad2: u32, _pad3: u32, _pad4: u32,
    }
}

params! {
    /// `slice.wgsl`: values `start..start + len` along `ne0` of `[ne0, n]`, made contiguous.
    Slice = "slice.wgsl" {
        ne0: u32, len: u32, n: u32, groups_x: u32,
        start: u32, x_off: u32, y_off: u32, _pad0: u32,
        _pad1: u32, _pad2: u32, _pad3: u32, _pad4: u32,
    }
}

params! {
    /// `rope.wgsl`: NORM (`neox` 0) or NEOX (1) rotary embedding of `[hd, heads, n]`.
    Rope = "rope.wgsl" {
        hd: u32, heads: u32, n: u32, groups_x: u32,
        x_off: u32, y_off: u32, pos_off: u32, n_dims: u32,
        theta: f32, neox: u32, _pad1: u32, _pad2: u32,
    }
}

params! {
    /// `attention.wgsl`: `n_q` queries over `n_kv` keys per head, grouped heads.
    Attention = "attention.wgsl" {
        n_q: u32, n_kv: u32, n_head: u32, n_head_kv: u32,
        q_off: u32, k_off: u32, v_off: u32, y_off: u32,
        scale: f32, causal: u32, _pad0: u32, _pad1: u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, type) of each field of the WGSL `struct Params` in `source`.
    fn wgsl_fields(source: &str) -> Vec<(String, String)> {
        let body = source.split("struct Params {").nth(1).expect("a struct Params").split('}').next().unwrap();
        body.split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(|f| {
                let (name, ty) = f.split_once(':').expect("name: type");
                (name.trim().to_string(), ty.trim().to_string())
            })
            .collect()
    }

    fn check<P: KernelParams>(rust_types: &[&str]) {
        let wgsl = wgsl_fields(P::SOURCE);
        let names: Vec<&str> = wgsl.iter().map(|(n, _)| n.as_str()).collect();
        // The Rust struct may pad past the WGSL one (a 32-byte WGSL struct is read from a
        // 48-byte block); every WGSL field must match in name, order and type.
        assert!(P::FIELDS.len() >= names.len() && P::FIELDS[..names.len()] == names[..], "{:?} vs {names:?}", P::FIELDS);
        let types: Vec<&str> = wgsl.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(&rust_types[..types.len()], &types[..], "{:?}", P::FIELDS);
    }

    /// The Rust field types, read from the struct's `Debug` output of a value whose f32 fields
    /// are 0.5 (u32 fields print as integers).
    fn types_of<P: KernelParams + std::fmt::Debug>(p: P) -> Vec<&'static str> {
        let text = format!("{p:?}");
        text.split(['{', ',', '}']).filter_map(|f| f.split_once(':')).map(|(_, v)| if v.trim() == "0.5" { "f32" } else { "u32" }).collect()
    }

    #[test]
    fn every_kernels_params_match_its_wgsl_struct() {
        check::<Elementwise>(&types_of(Elementwise::default()));
        check::<GetRows>(&types_of(GetRows::default()));
        check::<MatMul>(&types_of(MatMul::default()));
        check::<MatVec>(&types_of(MatVec::default()));
        check::<RmsNorm>(&types_of(RmsNorm { eps: 0.5, ..Default::default() }));
        check::<Rope>(&types_of(Rope { theta: 0.5, ..Default::default() }));
        check::<Slice>(&types_of(Slice::default()));
        check::<RowStats>(&types_of(RowStats::default()));
        check::<RowCandidates>(&types_of(RowCandidates::default()));
        check::<Attention>(&types_of(Attention { scale: 0.5, ..Default::default() }));
    }

    #[test]
    fn a_moved_field_is_caught() {
        // The comparison can fail: a WGSL struct with two fields swapped does not match.
        let swapped = "struct Params {\n    ne0: u32, rows: u32, y_off: u32, x_off: u32,\n    eps: f32, groups_x: u32, _pad0: u32, _pad1: u32,\n}";
        let names: Vec<String> = wgsl_fields(swapped).into_iter().map(|(n, _)| n).collect();
        assert_ne!(&RmsNorm::FIELDS[..names.len()], &names.iter().map(String::as_str).collect::<Vec<_>>()[..]);
    }
}
