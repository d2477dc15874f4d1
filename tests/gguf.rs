//! GGUF reader/writer: round trips, targeted malformed inputs, and exhaustive corruption.

use std::path::Path;

use dlm::gguf::{GgmlType, Gguf, GgufWriter, Value, ValueType};
use dlm::Error;

fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set("general.architecture", "llama").unwrap();
    w.set("t.u8", Value::U8(200)).unwrap();
    w.set("t.i8", Value::I8(-5)).unwrap();
    w.set("t.u16", Value::U16(60000)).unwrap();
    w.set("t.i16", Value::I16(-30000)).unwrap();
    w.set("t.u32", Value::U32(4_000_000_000)).unwrap();
    w.set("t.i32", Value::I32(-2_000_000_000)).unwrap();
    w.set("t.f32", Value::F32(1.5)).unwrap();
    w.set("t.bool", Value::Bool(true)).unwrap();
    w.set("t.str", "héllo ▁world").unwrap();
    w.set("t.u64", Value::U64(u64::MAX)).unwrap();
    w.set("t.i64", Value::I64(i64::MIN)).unwrap();
    w.set("t.f64", Value::F64(-2.25)).unwrap();
    w.set("t.strs", Value::string_array(["a", "", "ти"])).unwrap();
    w.set("t.empty", Value::Array(ValueType::F32, vec![])).unwrap();
    let inner = |xs: &[i32]| Value::i32_array(xs.iter().copied());
    w.set("t.nested", Value::Array(ValueType::Array, vec![inner(&[1, 2]), inner(&[]), inner(&[3])])).unwrap();
    w.add_tensor("a", &[32, 3], GgmlType::Q8_0).unwrap();
    w.add_tensor("b", &[5], GgmlType::F32).unwrap();
    w.add_tensor("c", &[256, 1, 2], GgmlType::Q6_K).unwrap();
    w
}

fn tensor_bytes(w: &GgufWriter) -> Vec<Vec<u8>> {
    w.tensors().iter().enumerate().map(|(i, t)| (0..t.size()).map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8)).collect()).collect()
}

fn write_sample(path: &Path) -> (GgufWriter, Vec<Vec<u8>>) {
    let w = sample_writer();
    let data = tensor_bytes(&w);
    let mut s = w.create(path).unwrap();
    for d in &data {
        s.write_tensor(d).unwrap();
    }
    s.finish().unwrap();
    (w, data)
}

#[test]
fn round_trip_every_value_type_and_tensor_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    let (w, data) = write_sample(&path);
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.metadata(), w.metadata());
    assert_eq!(g.tensors().len(), 3);
    for (t, (spec, d)) in g.tensors().iter().zip(w.tensors().iter().zip(&data)) {
        assert_eq!((&t.name, &t.shape, t.ggml_type), (&spec.name, &spec.shape, spec.ggml_type));
        assert_eq!(t.offset % 32, 0);
        assert_eq!(g.tensor_data(t), &d[..]);
    }
    assert_eq!(g.data_offset() % 32, 0);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), w.file_size());
    assert_eq!(g.get_u64("t.u8").unwrap(), 200);
    assert!(g.get_u64("t.i8").is_err(), "negative values are not u64");
    let e = g.get_str("t.u32").unwrap_err().to_string();
    assert!(e.contains("t.u32") && e.contains("expected a string"), "{e}");
    assert!(g.get_u32("missing.key").unwrap_err().to_string().contains("missing.key"));
}

#[test]
fn custom_alignment_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.gguf");
    let mut w = GgufWriter::new();
    w.set("general.alignment", 64u32).unwrap();
    w.add_tensor("x", &[3], GgmlType::F32).unwrap();
    w.add_tensor("y", &[7], GgmlType::F32).unwrap();
    let mut s = w.create(&path).unwrap();
    s.write_tensor(&[1; 12]).unwrap();
    s.write_tensor(&[2; 28]).unwrap();
    s.finish().unwrap();
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.data_offset() % 64, 0);
    assert_eq!(g.tensor("y").unwrap().offset, 64);
    assert_eq!(g.tensor_data(g.tensor("y").unwrap()), &[2; 28]);
    assert!(GgufWriter::new().set("general.alignment", 48u32).is_err());
}

#[test]
fn failed_or_abandoned_writes_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    let w = sample_writer();
    // Abandoned after one tensor (an error or panic in the caller).
    let mut s = w.create(&path).unwrap();
    s.write_tensor(&tensor_bytes(&w)[0]).unwrap();
    drop(s);
    // Finished too early.
    let s = w.create(&path).unwrap();
    assert!(s.finish().is_err());
    // Wrong size for a tensor.
    let mut s = w.create(&path).unwrap();
    assert!(s.write_tensor(&[0u8; 3]).is_err());
    drop(s);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // An existing good file survives a failed rewrite untouched.
    write_sample(&path);
    let before = std::fs::read(&path).unwrap();
    drop(w.create(&path).unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn writer_rejects_invalid_tensors() {
    let mut w = GgufWriter::new();
    assert!(w.add_tensor("q", &[33, 2], GgmlType::Q4_0).is_err());
    assert!(w.add_tensor(&"n".repeat(64), &[4], GgmlType::F32).is_err());
    assert!(w.add_tensor("d", &[1, 1, 1, 1, 1], GgmlType::F32).is_err());
    w.add_tensor("t", &[4], GgmlType::F32).unwrap();
    assert!(w.add_tensor("t", &[4], GgmlType::F32).is_err());
    assert!(w.set("mixed", Value::Array(ValueType::U8, vec![Value::U8(1), Value::U16(2)])).is_err());
}

fn sample_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.gguf");
    write_sample(&path);
    std::fs::read(path).unwrap()
}

fn parse(bytes: Vec<u8>) -> dlm::Result<Gguf> {
    let g = Gguf::from_bytes("mem.gguf", bytes)?;
    for t in g.tensors() {
        assert_eq!(g.tensor_data(t).len() as u64, t.size); // in bounds by construction
    }
    Ok(g)
}

fn expect_format_error(bytes: Vec<u8>, needle: &str) {
    match parse(bytes) {
        Err(e) => assert!(e.to_string().contains(needle), "error `{e}` lacks `{needle}`"),
        Ok(_) => panic!("accepted a file that should fail with `{needle}`"),
    }
}

/// Byte offset of the first occurrence of `needle`.
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).expect("needle present")
}

#[test]
fn targeted_malformations_name_the_problem() {
    let good = sample_bytes();
    parse(good.clone()).unwrap();

    let mut b = good.clone();
    b[0] = b'X';
    expect_format_error(b, "bad magic");
    expect_format_error(b"GGUF".to_vec(), "truncated");
    let mut b = good.clone();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    expect_format_error(b, "version 1");
    let mut b = good.clone();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    expect_format_error(b, "big-endian");
    let mut b = good.clone();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes()); // n_kv
    expect_format_error(b, "metadata count");
    let mut b = good.clone();
    b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes()); // n_tensors
    expect_format_error(b, "tensor count");

    // Duplicate key: rename "t.i8" to "t.u8".
    let mut b = good.clone();
    let at = find(&b, b"t.i8");
    b[at + 2] = b'u';
    expect_format_error(b, "duplicate metadata key `t.u8`");
    // Duplicate tensor name: rename tensor "b" to "a" (names are 1 byte after an 8-byte length).
    let mut b = good.clone();
    let at = find(&b, &[1, 0, 0, 0, 0, 0, 0, 0, b'b']);
    b[at + 8] = b'a';
    expect_format_error(b, "duplicate tensor name");
    // Invalid UTF-8 in a string value.
    let mut b = good.clone();
    let at = find(&b, "héllo".as_bytes());
    b[at + 1] = 0xff;
    expect_format_error(b, "UTF-8");
    // Bool that is neither 0 nor 1.
    let mut b = good.clone();
    let at = find(&b, b"t.bool") + 6 + 4;
    b[at] = 7;
    expect_format_error(b, "bool must be 0 or 1");

    // Tensor info of "a": name, n_dims=2, dims 32 and 3, type 8, offset.
    let info = find(&good, &[1, 0, 0, 0, 0, 0, 0, 0, b'a', 2, 0, 0, 0]) + 9;
    let mut b = good.clone();
    b[info + 20..info + 24].copy_from_slice(&4u32.to_le_bytes()); // removed type id
    expect_format_error(b, "unknown ggml type 4");
    let mut b = good.clone();
    b[info + 4..info + 12].copy_from_slice(&33u64.to_le_bytes()); // row not a whole Q8_0 block
    expect_format_error(b, "not a multiple of the q8_0 block size");
    let mut b = good.clone();
    b[info + 12..info + 20].copy_from_slice(&u64::MAX.to_le_bytes()); // rows overflow
    expect_format_error(b, "overflows");
    let mut b = good.clone();
    b[info + 24..info + 32].copy_from_slice(&8u64.to_le_bytes()); // misaligned offset
    expect_format_error(b, "not a multiple of the alignment");
    let mut b = good.clone();
    b[info + 24..info + 32].copy_from_slice(&(1u64 << 40).to_le_bytes()); // past the end
    expect_format_error(b, "outside");
    let mut b = good.clone();
    b[info..info + 4].copy_from_slice(&5u32.to_le_bytes()); // n_dims
    expect_format_error(b, "n_dims 5");
    // Tensor "b" moved onto "a": overlap.
    let info_b = find(&good, &[1, 0, 0, 0, 0, 0, 0, 0, b'b', 1, 0, 0, 0]) + 9;
    let mut b = good.clone();
    b[info_b + 16..info_b + 24].copy_from_slice(&0u64.to_le_bytes());
    expect_format_error(b, "overlaps");
    // Truncated data section (the trailing padding after the last tensor is optional).
    let mut b = good.clone();
    b.truncate(data_end(&good) - 1);
    expect_format_error(b, "outside");
}

#[test]
fn deeply_nested_arrays_are_rejected_without_recursing_forever() {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'k');
    b.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..100_000 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    expect_format_error(b, "nested deeper");
}

/// End of the last tensor's bytes (what follows is padding).
fn data_end(file: &[u8]) -> usize {
    let g = parse(file.to_vec()).unwrap();
    (g.data_offset() + g.tensors().iter().map(|t| t.offset + t.size).max().unwrap()) as usize
}

#[test]
fn every_truncation_is_an_error_never_a_panic() {
    let good = sample_bytes();
    let end = data_end(&good);
    assert!(end < good.len(), "the sample should end in padding");
    for len in end..=good.len() {
        parse(good[..len].to_vec()).unwrap();
    }
    for len in 0..end {
        let r = parse(good[..len].to_vec());
        assert!(r.is_err(), "truncated to {len} of {} bytes was accepted", good.len());
        assert!(matches!(r.unwrap_err(), Error::Format { .. } | Error::Tensor { .. }), "at {len}");
    }
}

/// A deterministic xorshift generator, so failures reproduce.
fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

#[test]
fn random_corruption_never_panics() {
    let good = sample_bytes();
    let mut next = xorshift(0x9E3779B97F4A7C15);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..20_000 {
        let mut b = good.clone();
        for _ in 0..1 + next() % 4 {
            let pos = (next() % b.len() as u64) as usize;
            b[pos] = match next() % 3 {
                0 => next() as u8,
                1 => b[pos] ^ (1 << (next() % 8)),
                _ => [0x00, 0xff, 0x7f, 0x80][(next() % 4) as usize],
            };
        }
        match parse(b) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    // Both outcomes must occur: corruption inside tensor data is legal, header damage is not.
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}

#[test]
fn reads_files_written_by_pypi_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("py.gguf");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pygguf_write.py");
    let out = std::process::Command::new("python3").arg(&script).arg(&path).output().expect("python3 runs");
    assert!(out.status.success(), "pygguf_write.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get("t.u8"), Some(&Value::U8(7)));
    assert_eq!(g.get("t.i64"), Some(&Value::I64(-1 << 40)));
    assert_eq!(g.get("t.f64"), Some(&Value::F64(0.125)));
    assert_eq!(g.get("t.bool"), Some(&Value::Bool(true)));
    assert_eq!(g.get_array("t.strs", ValueType::String).unwrap().len(), 3);
    assert_eq!(g.get_array("t.strs", ValueType::String).unwrap()[2].as_str(), Some("ти"));
    // The tensors: an f32 ramp, the same ramp in f16, and in Q8_0 (quantized by gguf.quants).
    let ramp: Vec<f32> = (0..64 * 2).map(|i| i as f32 / 64.0 - 1.0).collect();
    for (name, ty, tol) in [("ramp.f32", GgmlType::F32, 0.0), ("ramp.f16", GgmlType::F16, 1e-3), ("ramp.q8_0", GgmlType::Q8_0, 1e-2)] {
        let t = g.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!((t.ggml_type, t.shape.as_slice()), (ty, &[64u64, 2][..]), "{name}");
        let mut back = vec![0f32; 128];
        dlm::backend::ggml::dequantize(ty, g.tensor_data(t), &mut back).unwrap();
        let worst = ramp.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= tol, "{name}: max error {worst}");
    }
}

/// dlm's value check agrees with ggml's `ggml_validate_row_data` (llama.cpp's
/// `--check-tensors`) on every type both know: random blocks, many with a bad scale (random
/// bytes make an f16 exponent all ones one time in 32; a third of the blocks also get NaN or
/// infinity patterns written at random even offsets), judged block by block and as rows.
#[test]
fn value_check_agrees_with_ggml_on_every_type() {
    let mut next = xorshift(0x2545F4914F6CDD1D);
    // Q8_1 ggml does not validate (refuses it); F64 it judges after rounding to f32.
    for t in GgmlType::all().filter(|t| !matches!(t, GgmlType::Q8_1 | GgmlType::F64)) {
        let size = t.type_size() as usize;
        let (mut good, mut bad) = (0, 0);
        let mut row = Vec::new();
        for _ in 0..3000 {
            let mut block: Vec<u8> = (0..size).map(|_| next() as u8).collect();
            if next() % 3 == 0 {
                let at = (next() as usize % size) & !1;
                let pattern: [u8; 2] = [[0x00, 0x7c], [0x00, 0x7e], [0x00, 0xfc], [0x80, 0x7f], [0xff, 0xff]][next() as usize % 5];
                block[at] = pattern[0];
                if at + 1 < size {
                    block[at + 1] = pattern[1];
                }
            }
            let ggml_ok = dlm::backend::ggml::validate_row_data(t, &block);
            let ours = dlm::gguf::first_non_finite(t, &block);
            assert_eq!(ours.is_none(), ggml_ok, "{t}: block {block:02x?}: dlm says {ours:?}");
            if ggml_ok {
                good += 1;
            } else {
                bad += 1;
            }
            if row.len() < 64 * size {
                row.extend_from_slice(&block);
            }
        }
        let integer = matches!(t, GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64);
        assert!(good > 0 && (bad > 0 || integer), "{t}: {good} good and {bad} bad blocks: the comparison tests nothing");
        assert_eq!(dlm::gguf::first_non_finite(t, &row).is_none(), dlm::backend::ggml::validate_row_data(t, &row), "{t}: a row of 64 blocks");
    }
}
