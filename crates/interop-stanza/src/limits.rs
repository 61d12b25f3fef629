//! Decoder limits.

/// Bounds that both decoders enforce on untrusted input.
///
/// Memory a decoder allocates is bounded by these: the input is at most `max_size` bytes, the
/// decoded strings and bytes together at most `max_size` bytes (dictionary tokens and packed
/// strings expand, so this is checked on the output too), at most `max_nodes` nodes, and an
/// explicit stack of at most `max_depth` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest input (binary bytes or XML text) and largest decoded content, in bytes.
    pub max_size: usize,
    /// Deepest nesting; the stanza's root is at depth 1. Values above
    /// [`DEPTH_CEILING`](crate::binary::DEPTH_CEILING) (1,024) act as 1,024: dropping a deeper
    /// tree would recurse that deep.
    pub max_depth: usize,
    /// Most attributes on one node.
    pub max_attrs: usize,
    /// Most nodes in one stanza.
    pub max_nodes: usize,
}

impl Limits {
    /// The defaults: 1 MiB, 64 levels, 64 attributes per node, 16,384 nodes.
    pub const DEFAULT: Limits =
        Limits { max_size: 1 << 20, max_depth: 64, max_attrs: 64, max_nodes: 16_384 };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
