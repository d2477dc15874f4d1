// Weight loader: Q2_K super-blocks of 256 values copied as they are (84 bytes, 21 words:
// scales[16] (low nibble scale, high nibble min), qs[64] (four 2-bit values per byte), then
// f16 d and f16 dmin). Value n*128 + j*32 + l (n < 2, j < 4, l < 32) is bits 2j of qs[n*32 + l]
// with scale byte n*8 + 2j + l/16. P.w_row: blocks per row. `k` is a multiple of 4.
fn w_load4(row: u32, k: u32) -> vec4<f32> {
    let base = (row * P.w_row + k / 256u) * 21u;
    let i = k % 256u;
    let n = i / 128u;
    let j = (i % 128u) / 32u;
    let l = i % 32u;
    let q = w[base + 4u + (n * 32u + l) / 4u] >> (2u * j);
    let si = n * 8u + 2u * j + l / 16u;
    let sc = (w[base + si / 4u] >> (8u * (si % 4u))) & 255u;
    let dm = unpack2x16float(w[base + 20u]);
    let dl = dm.x * f32(sc & 15u);
    let ml = dm.y * f32(sc >> 4u);
    let v = vec4<u32>(q, q >> 8u, q >> 16u, q >> 24u) & vec4<u32>(3u);
    return dl * vec4<f32>(v) - vec4<f32>(ml);
}
