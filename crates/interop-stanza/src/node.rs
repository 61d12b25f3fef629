//! The stanza model.

/// A stanza node: tag, ordered attributes, content.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// The element name, e.g. `message`.
    pub tag: String,
    /// Attributes in order.
    pub attrs: Vec<(String, String)>,
    /// Children, raw bytes, or nothing.
    pub content: Content,
}

/// What a node contains.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Content {
    /// Nothing.
    #[default]
    Empty,
    /// Child nodes.
    Nodes(Vec<Node>),
    /// Raw bytes (ciphertext travels as bytes, not base64).
    Bytes(Vec<u8>),
}

impl Node {
    /// An empty node with the given tag.
    pub fn new(tag: impl Into<String>) -> Self {
        Self { tag: tag.into(), attrs: Vec::new(), content: Content::Empty }
    }

    /// Adds (or replaces) an attribute.
    pub fn with_attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Sets the content to child nodes.
    pub fn with_children(mut self, children: Vec<Node>) -> Self {
        self.content = Content::Nodes(children);
        self
    }

    /// Sets the content to raw bytes.
    pub fn with_bytes(mut self, bytes: Vec<u8>) -> Self {
        self.content = Content::Bytes(bytes);
        self
    }

    /// Sets an attribute, replacing an existing one of the same name in place.
    pub fn set_attr(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    /// The value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Child nodes (empty unless the content is nodes).
    pub fn children(&self) -> &[Node] {
        match &self.content {
            Content::Nodes(n) => n,
            _ => &[],
        }
    }

    /// The first child with the given tag.
    pub fn child(&self, tag: &str) -> Option<&Node> {
        self.children().iter().find(|c| c.tag == tag)
    }

    /// The raw bytes content, if any.
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.content {
            Content::Bytes(b) => Some(b),
            _ => None,
        }
    }
}
