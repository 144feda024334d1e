//! Writing inference graphs as ONNX (<https://onnx.ai>): a [`Graph`] that layers add their
//! nodes and weights to, serialised by hand in protobuf's wire format (the messages an
//! inference graph needs: `ModelProto`, `GraphProto`, `NodeProto`, `AttributeProto`,
//! `TensorProto`, `ValueInfoProto`; field numbers from `onnx/onnx.proto`).
//!
//! Each layer of [`crate::nn`] has an `onnx` method that appends what its eval-mode forward
//! pass computes and returns the name of its output, so a model's export walks the same
//! structure as its `forward`.

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use crate::Result;

/// An attribute value of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// `INT`.
    Int(i64),
    /// `INTS`.
    Ints(Vec<i64>),
    /// `FLOAT`.
    Float(f32),
    /// `FLOATS`.
    Floats(Vec<f32>),
    /// `STRING`.
    String(String),
}

#[derive(Debug, Clone)]
struct Node {
    op: String,
    name: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    attributes: Vec<(String, Attr)>,
}

#[derive(Debug, Clone)]
enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

#[derive(Debug, Clone)]
struct Initializer {
    name: String,
    dims: Vec<usize>,
    data: Data,
}

/// A graph input or output: its name, element type (always float) and shape, where a
/// dimension is a number or a symbolic name (`"batch"`).
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    /// The value's name.
    pub name: String,
    /// Each dimension: `Ok(size)` or `Err(symbol)`.
    pub shape: Vec<std::result::Result<usize, String>>,
}

/// An inference graph under construction.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    initializers: Vec<Initializer>,
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
    used: HashMap<String, usize>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// A name not used yet, from `hint`.
    pub fn fresh(&mut self, hint: &str) -> String {
        let n = self.used.entry(hint.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            hint.to_string()
        } else {
            format!("{hint}_{}", *n - 1)
        }
    }

    /// Declares a graph input.
    pub fn input(&mut self, info: ValueInfo) -> String {
        let name = info.name.clone();
        self.used.insert(name.clone(), 1);
        self.inputs.push(info);
        name
    }

    /// Declares `value` (a node's output) a graph output under `info.name`, through an
    /// `Identity` node when the names differ.
    pub fn output(&mut self, value: &str, info: ValueInfo) {
        if value != info.name {
            self.nodes.push(Node {
                op: "Identity".into(),
                name: format!("{}_identity", info.name),
                inputs: vec![value.to_string()],
                outputs: vec![info.name.clone()],
                attributes: Vec::new(),
            });
        }
        self.outputs.push(info);
    }

    /// Appends an `op` node reading `inputs` (empty names are optional inputs left out) and
    /// returns its single output, named from `name`.
    pub fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attributes: Vec<(&str, Attr)>,
    ) -> String {
        let out = self.fresh(name);
        self.nodes.push(Node {
            op: op.to_string(),
            name: out.clone(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![out.clone()],
            attributes: attributes
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        });
        out
    }

    /// Adds `tensor` (any float dtype, stored as f32) as a weight named from `name`.
    pub fn weight(&mut self, name: &str, tensor: &Tensor) -> Result<String> {
        let name = self.fresh(name);
        let dims = tensor.dims().to_vec();
        let data = tensor
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        self.initializers.push(Initializer {
            name: name.clone(),
            dims,
            data: Data::F32(data),
        });
        Ok(name)
    }

    /// Adds a float constant of shape `dims`.
    pub fn floats(&mut self, name: &str, dims: &[usize], values: Vec<f32>) -> String {
        let name = self.fresh(name);
        self.initializers.push(Initializer {
            name: name.clone(),
            dims: dims.to_vec(),
            data: Data::F32(values),
        });
        name
    }

    /// Adds a 1-D int64 constant (shapes, scales' sizes, axes).
    pub fn int64s(&mut self, name: &str, values: Vec<i64>) -> String {
        let name = self.fresh(name);
        self.initializers.push(Initializer {
            name: name.clone(),
            dims: vec![values.len()],
            data: Data::I64(values),
        });
        name
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the graph has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node types used, with their counts, sorted by name.
    pub fn op_counts(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for n in &self.nodes {
            *counts.entry(n.op.as_str()).or_default() += 1;
        }
        let mut v: Vec<(String, usize)> = counts
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        v.sort();
        v
    }

    /// The serialised `ModelProto`: this graph named `name`, the default-domain `opset`, and
    /// `metadata` as `metadata_props`.
    pub fn to_model(&self, name: &str, opset: i64, metadata: &[(String, String)]) -> Vec<u8> {
        let mut graph = Writer::default();
        for n in &self.nodes {
            graph.message(1, &node(n));
        }
        graph.string(2, name);
        for i in &self.initializers {
            graph.message(5, &initializer(i));
        }
        for v in &self.inputs {
            graph.message(11, &value_info(v));
        }
        for v in &self.outputs {
            graph.message(12, &value_info(v));
        }
        let mut model = Writer::default();
        // IR version 8 goes with opsets 14 to 18.
        model.int(1, 8);
        model.string(2, "mustard");
        model.string(3, env!("CARGO_PKG_VERSION"));
        model.message(7, &graph);
        let mut opset_id = Writer::default();
        opset_id.string(1, "");
        opset_id.int(2, opset);
        model.message(8, &opset_id);
        for (k, v) in metadata {
            let mut entry = Writer::default();
            entry.string(1, k);
            entry.string(2, v);
            model.message(14, &entry);
        }
        model.0
    }
}

impl Graph {
    /// `Relu(x)`.
    pub fn relu(&mut self, x: &str, name: &str) -> String {
        self.node("Relu", name, &[x], Vec::new())
    }

    /// `a + b`.
    pub fn add(&mut self, a: &str, b: &str, name: &str) -> String {
        self.node("Add", name, &[a, b], Vec::new())
    }

    /// [`crate::ops::max_pool2d`]: padding never wins the maximum, floor rounding.
    pub fn max_pool(
        &mut self,
        x: &str,
        kernel: usize,
        stride: usize,
        padding: usize,
        name: &str,
    ) -> String {
        let (k, s, p) = (kernel as i64, stride as i64, padding as i64);
        self.node(
            "MaxPool",
            name,
            &[x],
            vec![
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![s, s])),
                ("pads", Attr::Ints(vec![p, p, p, p])),
                ("ceil_mode", Attr::Int(0)),
            ],
        )
    }

    /// Upsampling by the whole factor `factor`: bilinear with PyTorch's `align_corners=False`
    /// ([`crate::ops::upsample_bilinear2d`]: half-pixel centres, clamped at the edges) or
    /// nearest ([`crate::ops::upsample_nearest2d`]: each pixel repeated).
    pub fn upsample(&mut self, x: &str, factor: usize, bilinear: bool, name: &str) -> String {
        let f = factor as f32;
        let scales = self.floats(&format!("{name}.scales"), &[4], vec![1.0, 1.0, f, f]);
        let attributes = if bilinear {
            vec![
                ("mode", Attr::String("linear".into())),
                (
                    "coordinate_transformation_mode",
                    Attr::String("half_pixel".into()),
                ),
            ]
        } else {
            vec![
                ("mode", Attr::String("nearest".into())),
                (
                    "coordinate_transformation_mode",
                    Attr::String("asymmetric".into()),
                ),
                ("nearest_mode", Attr::String("floor".into())),
            ]
        };
        self.node("Resize", name, &[x, "", &scales], attributes)
    }

    /// The mean over height and width: `(N, C, H, W)` → `(N, C)`.
    pub fn spatial_mean(&mut self, x: &str, name: &str) -> String {
        let pooled = self.node(
            "GlobalAveragePool",
            &format!("{name}.pool"),
            &[x],
            Vec::new(),
        );
        self.node("Flatten", name, &[&pooled], vec![("axis", Attr::Int(1))])
    }
}

fn node(n: &Node) -> Writer {
    let mut w = Writer::default();
    for i in &n.inputs {
        w.string(1, i);
    }
    for o in &n.outputs {
        w.string(2, o);
    }
    w.string(3, &n.name);
    w.string(4, &n.op);
    for (name, value) in &n.attributes {
        let mut a = Writer::default();
        a.string(1, name);
        // AttributeProto.AttributeType: FLOAT 1, INT 2, STRING 3, FLOATS 6, INTS 7.
        match value {
            Attr::Float(f) => {
                a.float(2, *f);
                a.int(20, 1);
            }
            Attr::Int(i) => {
                a.int(3, *i);
                a.int(20, 2);
            }
            Attr::String(s) => {
                a.string(4, s);
                a.int(20, 3);
            }
            Attr::Floats(v) => {
                for f in v {
                    a.float(7, *f);
                }
                a.int(20, 6);
            }
            Attr::Ints(v) => {
                for i in v {
                    a.int(8, *i);
                }
                a.int(20, 7);
            }
        }
        w.message(5, &a);
    }
    w
}

fn initializer(i: &Initializer) -> Writer {
    let mut w = Writer::default();
    for &d in &i.dims {
        w.int(1, d as i64);
    }
    // TensorProto.DataType: FLOAT 1, INT64 7; raw_data is little-endian.
    let raw: Vec<u8> = match &i.data {
        Data::F32(v) => {
            w.int(2, 1);
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
        Data::I64(v) => {
            w.int(2, 7);
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
    };
    w.string(8, &i.name);
    w.bytes(9, &raw);
    w
}

fn value_info(v: &ValueInfo) -> Writer {
    let mut shape = Writer::default();
    for d in &v.shape {
        let mut dim = Writer::default();
        match d {
            Ok(n) => dim.int(1, *n as i64),
            Err(symbol) => dim.string(2, symbol),
        }
        shape.message(1, &dim);
    }
    let mut tensor = Writer::default();
    tensor.int(1, 1);
    tensor.message(2, &shape);
    let mut ty = Writer::default();
    ty.message(1, &tensor);
    let mut w = Writer::default();
    w.string(1, &v.name);
    w.message(2, &ty);
    w
}

/// Protobuf's wire format, the parts ONNX uses.
#[derive(Debug, Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }

    /// An int32/int64/enum field (negative values as 10-byte two's complement, as protobuf
    /// does).
    fn int(&mut self, field: u32, v: i64) {
        self.key(field, 0);
        self.varint(v as u64);
    }

    fn float(&mut self, field: u32, v: f32) {
        self.key(field, 5);
        self.0.extend(v.to_le_bytes());
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend(b);
    }

    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    fn message(&mut self, field: u32, m: &Writer) {
        self.bytes(field, &m.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_matches_protobuf() {
        let mut w = Writer::default();
        w.int(1, 150);
        assert_eq!(
            w.0,
            [0x08, 0x96, 0x01],
            "the protobuf documentation's example"
        );
        let mut w = Writer::default();
        w.int(3, -1);
        assert_eq!(
            w.0.len(),
            11,
            "a negative int64 takes ten bytes after its key"
        );
        let mut w = Writer::default();
        w.string(2, "testing");
        assert_eq!(w.0, [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']);
        let mut w = Writer::default();
        w.float(2, 1.0);
        assert_eq!(w.0, [0x15, 0x00, 0x00, 0x80, 0x3f]);
    }

    #[test]
    fn a_graph_serialises_its_parts() {
        let mut g = Graph::new();
        let x = g.input(ValueInfo {
            name: "x".into(),
            shape: vec![Err("batch".into()), Ok(3)],
        });
        let y = g.node("Relu", "relu", &[&x], Vec::new());
        assert_eq!(g.fresh("relu"), "relu_1");
        g.output(
            &y,
            ValueInfo {
                name: "y".into(),
                shape: vec![Err("batch".into()), Ok(3)],
            },
        );
        assert_eq!(g.op_counts(), [("Identity".into(), 1), ("Relu".into(), 1)]);
        let bytes = g.to_model("m", 17, &[("k".into(), "v".into())]);
        // ir_version 8, then producer "mustard".
        assert_eq!(bytes[..4], [0x08, 0x08, 0x12, 0x07]);
        let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"Relu") && has(b"batch") && has(b"Identity"));
        // metadata_props (field 14) {key "k", value "v"}.
        assert!(has(&[0x72, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v']));
    }
}
