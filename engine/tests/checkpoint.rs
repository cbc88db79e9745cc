//! Checkpoint loading: valid single-file and sharded checkpoints open and read
//! back the same values; damaged ones give an error naming file and tensor.

use std::collections::BTreeMap;
use std::path::Path;

use engine::synth::write_preset;
use engine::weights::{Checkpoint, SHARD_INDEX, SINGLE_FILE};
use safetensors::tensor::TensorView as StView;
use safetensors::Dtype;

type Raw = (String, Dtype, Vec<usize>, Vec<u8>);

/// (name, dtype, shape, bytes) of every tensor in `dir`'s single file.
fn read_all(dir: &Path) -> Vec<Raw> {
    let bytes = std::fs::read(dir.join(SINGLE_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<Raw> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn write_file(path: &Path, tensors: &[Raw]) {
    let views: Vec<(String, StView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), StView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn synth(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_preset(name, 11, dir.path()).unwrap();
    dir
}

fn open_err(dir: &Path) -> String {
    match Checkpoint::open(dir) {
        Ok(_) => panic!("{} opened but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn opens_and_upcasts() {
    let dir = synth("tiny-qwen3");
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let t = ckpt
        .tensor("model.layers.1.self_attn.q_norm.weight")
        .unwrap();
    assert_eq!(t.shape, &[64]);
    assert_eq!(t.to_f32(), vec![1.0; 64]);
    let q = ckpt
        .tensor("model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(q.shape, &[8 * 64, 256]);
    let as_f32 = q.to_f32();
    let as_bf16 = q.to_bf16();
    assert!(as_f32.iter().zip(&as_bf16).all(|(a, b)| *a == b.to_f32()));
    assert!(ckpt.tensor("lm_head.weight").is_err(), "tiny-qwen3 is tied");
}

#[test]
fn truncated_file_is_an_error() {
    let dir = synth("tiny");
    let path = dir.path().join(SINGLE_FILE);
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 100).unwrap();
    let err = open_err(dir.path());
    assert!(
        err.contains(SINGLE_FILE) && err.contains("truncated"),
        "{err}"
    );
    // Truncated inside the header too.
    file.set_len(5).unwrap();
    let err = open_err(dir.path());
    assert!(err.contains(SINGLE_FILE), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = synth("tiny-qwen2");
    let mut tensors = read_all(dir.path());
    let name = "model.layers.2.self_attn.k_proj.bias";
    tensors.retain(|t| t.0 != name);
    write_file(&dir.path().join(SINGLE_FILE), &tensors);
    let err = open_err(dir.path());
    assert!(err.contains(name) && err.contains("missing"), "{err}");
}

#[test]
fn wrong_shape_and_dtype_are_named() {
    let dir = synth("tiny");
    let original = read_all(dir.path());
    let name = "model.layers.3.mlp.up_proj.weight";

    let mut tensors = original.clone();
    let t = tensors.iter_mut().find(|t| t.0 == name).unwrap();
    t.2 = vec![t.2[1], t.2[0]];
    write_file(&dir.path().join(SINGLE_FILE), &tensors);
    let err = open_err(dir.path());
    assert!(
        err.contains(name) && err.contains("shape") && err.contains(SINGLE_FILE),
        "{err}"
    );

    let mut tensors = original;
    let t = tensors.iter_mut().find(|t| t.0 == name).unwrap();
    t.1 = Dtype::I16;
    write_file(&dir.path().join(SINGLE_FILE), &tensors);
    let err = open_err(dir.path());
    assert!(err.contains(name) && err.contains("I16"), "{err}");
}

#[test]
fn config_mismatch_and_missing_files_are_errors() {
    let dir = synth("tiny");
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let changed = text.replace("\"intermediate_size\": 768", "\"intermediate_size\": 512");
    assert_ne!(text, changed);
    std::fs::write(&config, changed).unwrap();
    let err = open_err(dir.path());
    assert!(err.contains("mlp.") && err.contains("512"), "{err}");

    std::fs::remove_file(dir.path().join(SINGLE_FILE)).unwrap();
    let err = open_err(dir.path());
    assert!(err.contains(SINGLE_FILE), "{err}");
    std::fs::remove_file(&config).unwrap();
    assert!(open_err(dir.path()).contains("config.json"));
}

#[test]
fn sharded_round_trip() {
    let single = synth("tiny");
    let sharded = tempfile::tempdir().unwrap();
    std::fs::copy(
        single.path().join("config.json"),
        sharded.path().join("config.json"),
    )
    .unwrap();
    let tensors = read_all(single.path());
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let mut weight_map = BTreeMap::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        write_file(&sharded.path().join(file), part);
        for t in part {
            weight_map.insert(t.0.clone(), file.to_string());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(sharded.path().join(SHARD_INDEX), index.to_string()).unwrap();

    let a = Checkpoint::open(single.path()).unwrap();
    let b = Checkpoint::open(sharded.path()).unwrap();
    assert_eq!(a.config, b.config);
    assert_eq!(a.tensor_names(), b.tensor_names());
    for name in a.tensor_names() {
        assert_eq!(
            a.tensor(name).unwrap().data,
            b.tensor(name).unwrap().data,
            "{name}"
        );
    }

    // An index entry pointing at the wrong shard is caught.
    let moved = &first[0].0;
    weight_map.insert(moved.clone(), "model-00002-of-00002.safetensors".into());
    let index = serde_json::json!({ "weight_map": weight_map });
    std::fs::write(sharded.path().join(SHARD_INDEX), index.to_string()).unwrap();
    let err = open_err(sharded.path());
    assert!(
        err.contains(moved.as_str()) && err.contains("00002"),
        "{err}"
    );
}

#[test]
fn content_hash_tracks_bytes() {
    let a = synth("tiny");
    let b = synth("tiny");
    let ha = Checkpoint::open(a.path()).unwrap().content_hash();
    assert_eq!(ha, Checkpoint::open(b.path()).unwrap().content_hash());
    assert_eq!(ha.len(), 64);
    let c = tempfile::tempdir().unwrap();
    write_preset("tiny", 12, c.path()).unwrap();
    assert_ne!(ha, Checkpoint::open(c.path()).unwrap().content_hash());
}

#[test]
fn a_nan_or_infinite_weight_is_an_error_naming_the_tensor() {
    let name = "model.layers.0.mlp.down_proj.weight";
    for (value, what) in [(f32::NAN, "NaN"), (f32::INFINITY, "infinite")] {
        let dir = synth("tiny");
        let mut tensors = read_all(dir.path());
        let t = tensors.iter_mut().find(|t| t.0 == name).unwrap();
        // One element, whatever the stored dtype.
        match t.1 {
            Dtype::F32 => t.3[4..8].copy_from_slice(&value.to_le_bytes()),
            Dtype::BF16 => t.3[2..4].copy_from_slice(&half::bf16::from_f32(value).to_le_bytes()),
            Dtype::F16 => t.3[2..4].copy_from_slice(&half::f16::from_f32(value).to_le_bytes()),
            other => panic!("unexpected dtype {other:?}"),
        }
        write_file(&dir.path().join(SINGLE_FILE), &tensors);
        let err = open_err(dir.path());
        assert!(
            err.contains(name) && err.contains("element 1") && err.contains(what),
            "{err}"
        );
    }
}

#[test]
fn tensors_of_layers_past_the_config_are_an_error() {
    let dir = synth("tiny");
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let layers = config["num_hidden_layers"].as_u64().unwrap();
    config["num_hidden_layers"] = (layers - 1).into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = open_err(dir.path());
    assert!(
        err.contains(&format!("model.layers.{}.", layers - 1)) && err.contains("num_hidden_layers"),
        "{err}"
    );
}
