// y = W x for a whole sequence: W is [k, m] in any loader's format (prepended: `w_load4`),
// x is f32 [k, n], y is f32 [ldy, n] and this dispatch writes rows m_base..m_base + m of it
// (a weight too large for one binding is uploaded in row chunks, one dispatch each).
//
// Tiled: a 16 x 16 workgroup computes a 64 x 64 block of y; each thread a 4 x 4 micro-tile.
// Per step of 32 along k the workgroup dequantizes a 32 x 64 tile of W (four values per load)
// and copies a 32 x 64 tile of x into workgroup memory (16 KiB in all). The tiles' element type
// is substituted: f32, or f16 on devices with SHADER_F16 for quantized weights (8 KiB, half
// the workgroup-memory traffic; sums stay f32).

{{ENABLE}}
struct Params {
    m: u32, n: u32, k: u32, ldy: u32,
    m_base: u32, x_off: u32, y_off: u32, w_off: u32,
    w_row: u32, w_sc: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 32u;

alias tile_t = {{TILE}};
var<workgroup> ws: array<tile_t, 2048>; // [TK][TM]
var<workgroup> xs: array<tile_t, 2048>; // [TK][TN]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let m0 = wid.x * TM;
    let n0 = wid.y * TN;
    var acc: array<vec4<f32>, 4>; // acc[j][i]: row 4 lid.x + i, column 4 lid.y + j
    for (var k0 = 0u; k0 < P.k; k0 += TK) {
        // W tile: 64 rows x 8 groups of four values = 512 loads, two per thread.
        for (var i = 0u; i < 2u; i++) {
            let idx = tid + i * 256u;
            let r = idx / 8u;
            let kk = (idx % 8u) * 4u;
            var v = vec4<f32>(0.0);
            if (m0 + r < P.m) {
                v = w_load4(m0 + r, k0 + kk);
            }
            ws[kk * TM + r] = tile_t(v.x);
            ws[(kk + 1u) * TM + r] = tile_t(v.y);
            ws[(kk + 2u) * TM + r] = tile_t(v.z);
            ws[(kk + 3u) * TM + r] = tile_t(v.w);
        }
        // x tile: 64 columns x 32 values, consecutive threads read consecutive k.
        for (var i = 0u; i < 8u; i++) {
            let idx = tid + i * 256u;
            let c = idx / TK;
            let kk = idx % TK;
            var v = 0.0;
            if (n0 + c < P.n && k0 + kk < P.k) {
                v = x[P.x_off + (n0 + c) * P.k + k0 + kk];
            }
            xs[kk * TN + c] = tile_t(v);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let a0 = kk * TM + lid.x * 4u;
            let b0 = kk * TN + lid.y * 4u;
            let a = vec4<f32>(f32(ws[a0]), f32(ws[a0 + 1u]), f32(ws[a0 + 2u]), f32(ws[a0 + 3u]));
            let b = vec4<f32>(f32(xs[b0]), f32(xs[b0 + 1u]), f32(xs[b0 + 2u]), f32(xs[b0 + 3u]));
            acc[0] += a * b.x;
            acc[1] += a * b.y;
            acc[2] += a * b.z;
            acc[3] += a * b.w;
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < 4u; j++) {
        let col = n0 + lid.y * 4u + j;
        if (col < P.n) {
            for (var i = 0u; i < 4u; i++) {
                let row = m0 + lid.x * 4u + i;
                if (row < P.m) {
                    y[P.y_off + col * P.ldy + P.m_base + row] = acc[j][i];
                }
            }
        }
    }
}
