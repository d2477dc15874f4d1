// Rotary position embedding, ggml's NORM mode (LLaMA as converted by llama.cpp): within each
// head of hd values, adjacent pairs (2p, 2p + 1) with 2p < n_dims rotate by
// pos * theta^(-2p / n_dims); the rest is copied. x [hd, heads, n], pos i32 [n]; one thread per pair.

struct Params {
    hd: u32, heads: u32, n: u32, groups_x: u32,
    x_off: u32, y_off: u32, pos_off: u32, n_dims: u32,
    theta: f32, _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<i32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * P.groups_x + wid.x) * 256u + lid;
    let pairs = P.hd / 2u;
    if (t >= pairs * P.heads * P.n) {
        return;
    }
    let p = t % pairs;
    let token = t / (pairs * P.heads);
    let i = 2u * t; // the pair's first value: pairs tile the tensor exactly (hd is even)
    let x0 = x[P.x_off + i];
    let x1 = x[P.x_off + i + 1u];
    if (2u * p >= P.n_dims) {
        y[P.y_off + i] = x0;
        y[P.y_off + i + 1u] = x1;
        return;
    }
    let angle = f32(pos[P.pos_off + token]) * pow(P.theta, -f32(2u * p) / f32(P.n_dims));
    let c = cos(angle);
    let s = sin(angle);
    y[P.y_off + i] = x0 * c - x1 * s;
    y[P.y_off + i + 1u] = x0 * s + x1 * c;
}
