//! The stanza model.

use std::fmt;

use crate::dict::Dictionary;

/// A stanza node: tag, ordered attributes, content.
///
/// `Debug` redacts: it shows tags, attribute names, attribute values that are dictionary
/// tokens (protocol vocabulary such as `type="msg"`) and the length of bytes content, never
/// identifiers, ids, numbers or ciphertext. Use [`xml::to_string`](crate::xml::to_string) to
/// see everything.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// The element name, e.g. `message`.
    pub tag: String,
    /// Attributes in order.
    pub attrs: Vec<(String, String)>,
    /// Children, raw bytes, or nothing.
    pub content: Content,
}

/// What a node contains. `Debug` redacts like [`Node`]'s.
#[derive(Clone, PartialEq, Eq, Default)]
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

impl fmt::Debug for Node {
    /// `message{id=…, type="text"}[enc{v="2", type="msg"}(48 bytes)]`; iterative, so any depth
    /// is fine.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dict = Dictionary::current();
        // Open child lists, and whether a child of each was written yet.
        let mut stack: Vec<(std::slice::Iter<'_, Node>, bool)> = Vec::new();
        let mut next = Some(self);
        loop {
            if let Some(node) = next.take() {
                f.write_str(&node.tag)?;
                if !node.attrs.is_empty() {
                    f.write_str("{")?;
                    for (i, (k, v)) in node.attrs.iter().enumerate() {
                        let sep = if i == 0 { "" } else { ", " };
                        if dict.token(v).is_some() {
                            write!(f, "{sep}{k}={v:?}")?;
                        } else {
                            write!(f, "{sep}{k}=…")?;
                        }
                    }
                    f.write_str("}")?;
                }
                match &node.content {
                    Content::Empty => {}
                    Content::Bytes(b) => write!(f, "({} bytes)", b.len())?,
                    Content::Nodes(c) => {
                        f.write_str("[")?;
                        stack.push((c.iter(), false));
                    }
                }
            }
            let Some((siblings, written)) = stack.last_mut() else { return Ok(()) };
            match siblings.next() {
                Some(child) => {
                    if std::mem::replace(written, true) {
                        f.write_str(", ")?;
                    }
                    next = Some(child);
                }
                None => {
                    stack.pop();
                    f.write_str("]")?;
                }
            }
        }
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Empty => f.write_str("Empty"),
            Content::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Content::Nodes(n) => write!(f, "Nodes({} children)", n.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_identifiers_and_content() {
        let n = Node::new("message")
            .with_attr("id", "3eb0c4d1")
            .with_attr("to", "2001:3@s.interop")
            .with_attr("type", "text")
            .with_children(vec![
                Node::new("enc").with_attr("type", "msg").with_bytes(b"secret".to_vec()),
                Node::new("participants").with_children(vec![]),
            ]);
        let s = format!("{n:?}");
        assert_eq!(
            s,
            r#"message{id=…, to=…, type="text"}[enc{type="msg"}(6 bytes), participants[]]"#
        );
        assert_eq!(format!("{:?}", n.content), "Nodes(2 children)");
    }

    #[test]
    fn debug_of_a_deep_tree_does_not_recurse() {
        // Built and dropped without recursion: a chain of 10,000 nested nodes.
        let mut n = Node::new("x");
        for _ in 0..10_000 {
            n = Node::new("x").with_children(vec![n]);
        }
        assert_eq!(format!("{n:?}").len(), 10_001 + 2 * 10_000);
        // Drop iteratively too (the derived Drop recurses once per level).
        let mut cur = n;
        while let Content::Nodes(mut c) = std::mem::take(&mut cur.content) {
            match c.pop() {
                Some(child) => cur = child,
                None => break,
            }
        }
    }
}
