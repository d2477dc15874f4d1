// Weight loader: IQ4_NL blocks of 32 values, split at upload like Q4_0 (4 words of nibbles per
// block in ggml's order, then every block's f16 scale, two per u32, from word P.w_sc); each
// nibble indexes ggml's non-linear table `kvalues_iq4nl`. P.w_row: blocks per row.
var<private> KV_IQ4NL: array<f32, 16> = array<f32, 16>(-127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0);

fn w_load4(row: u32, k: u32) -> vec4<f32> {
    let b = row * P.w_row + k / 32u;
    let kin = k % 32u;
    let word = w[b * 4u + (kin % 16u) / 4u];
    let sh = select(0u, 4u, kin >= 16u);
    let d = unpack2x16float(w[P.w_sc + b / 2u])[b & 1u];
    var v: vec4<f32>;
    for (var c = 0u; c < 4u; c++) {
        v[c] = d * KV_IQ4NL[(word >> (sh + 8u * c)) & 15u];
    }
    return v;
}
