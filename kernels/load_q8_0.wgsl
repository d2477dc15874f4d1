// Weight loader: Q8_0 blocks of 32 values, split at upload into 8 u32 of signed bytes per
// block, then every block's f16 scale, two per u32, from word P.w_sc. P.w_row: blocks per row.
// `k` is a multiple of 4: the four values share one word and one scale.
fn w_load4(row: u32, k: u32) -> vec4<f32> {
    let b = row * P.w_row + k / 32u;
    let word = bitcast<i32>(w[b * 8u + (k % 32u) / 4u]);
    let d = unpack2x16float(w[P.w_sc + b / 2u])[b & 1u];
    let q = vec4<i32>((word << 24u) >> 24u, (word << 16u) >> 24u, (word << 8u) >> 24u, word >> 24u);
    return vec4<f32>(q) * d;
}
