// y = W x for few columns (n <= 16: the LM head on the rows the sampler reads, short batches):
// W is [k, m] in any loader's format (prepended: `w_load4`), x is f32 [k, n], y is f32
// [ldy, n]; this dispatch writes rows m_base..m_base + m. One workgroup of 64 threads per row
// of W: each thread dequantizes every 64th group of four values once and multiplies it with
// every column, then the workgroup sums its 64 partial dot products. The 64 x 64 tiles of
// matmul.wgsl would spend 3/4 or more of their multiply-adds on columns that do not exist.
//
// The reduction is substituted where the kernel ends: with subgroups (wgpu's SUBGROUP feature) each subgroup adds its
// lanes in registers and one barrier joins the subgroups; without, a tree in workgroup memory
// takes six barriers.

struct Params {
    m: u32, n: u32, k: u32, ldy: u32,
    m_base: u32, x_off: u32, y_off: u32, w_off: u32,
    w_row: u32, w_sc: u32, groups_x: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const NMAX: u32 = 16u;
var<workgroup> part: array<f32, 1024>; // [NMAX][64]

// Four values of column c from k on (zeros past the end of a ragged row).
fn x4(c: u32, k: u32) -> vec4<f32> {
    let b = P.x_off + c * P.k + k;
    if (k + 3u < P.k) {
        return vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]);
    }
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (k + j < P.k) {
            v[j] = x[b + j];
        }
    }
    return v;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32{{ARGS}}) {
    let row = wid.y * P.groups_x + wid.x;
    if (row >= P.m) {
        return; // uniform across the workgroup
    }
    var acc: array<f32, 16>;
    for (var k = lid * 4u; k < P.k; k += 256u) {
        let v = w_load4(row, k);
        for (var c = 0u; c < P.n; c++) {
            acc[c] += dot(v, x4(c, k));
        }
    }
{{REDUCE}}
}
