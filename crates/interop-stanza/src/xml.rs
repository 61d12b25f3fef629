//! The text XML codec: for documentation, logs, debugging and tests (the wire is [`binary`]).
//!
//! [`binary`]: crate::binary
//!
//! The XML form of a [`Node`]:
//! - the tag and attribute names are XML names (ASCII letters, digits, `_ : . -`, not starting
//!   with a digit, `.` or `-`); attribute values are escaped (`& < > "` and tab, newline,
//!   carriage return as character references, so they survive attribute-value normalisation);
//! - children are child elements; whitespace between them is not content;
//! - bytes content is base64 (RFC 4648, with padding) as the element's text; whitespace inside
//!   it is ignored when reading;
//! - `<a/>` is no content, `<a></a>` is empty bytes. An empty child list has no XML form of its
//!   own: it is written `<a/>` and reads back as no content.
//!
//! The reader accepts exactly that subset: a leading `<?xml ...?>` declaration and comments
//! are skipped; DTDs ([`Error::DtdForbidden`], [`Error::EntityDeclarationForbidden`]),
//! processing instructions, entity references other than the five predefined ones and
//! character references, text mixed with elements, and content after the root element are
//! errors. It is iterative (an explicit stack bounded by [`Limits::max_depth`]) and never reads
//! more than [`Limits::max_size`] bytes of text.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::attributes::AttrError;
use quick_xml::events::{BytesStart, Event};

use crate::binary::DEPTH_CEILING;
use crate::{Content, Error, Limits, Node, Result};

/// Writes `node` as one line of XML.
pub fn to_string(node: &Node) -> Result<String> {
    write(node, None)
}

/// Writes `node` as indented XML (two spaces per level; bytes content stays on its element's
/// line), ending without a newline.
pub fn to_string_pretty(node: &Node) -> Result<String> {
    write(node, Some(2))
}

/// Reads one stanza from XML text with the default [`Limits`].
pub fn from_str(text: &str) -> Result<Node> {
    from_str_with(text, &Limits::DEFAULT)
}

/// Reads one stanza from XML bytes (UTF-8) with the default [`Limits`].
pub fn from_bytes(text: &[u8]) -> Result<Node> {
    if text.len() > Limits::DEFAULT.max_size {
        return Err(Error::LimitExceeded { limit: "stanza size", max: Limits::DEFAULT.max_size });
    }
    from_str(std::str::from_utf8(text).map_err(|_| Error::InvalidUtf8)?)
}

// ---------------------------------------------------------------------------------------------
// Writer

fn write(root: &Node, indent: Option<usize>) -> Result<String> {
    let mut out = String::with_capacity(128 + root.bytes().map_or(0, |b| b.len() * 4 / 3));
    let newline = |out: &mut String, depth: usize| {
        if let Some(step) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', depth * step));
        }
    };
    open(root, &mut out)?;
    let mut stack: Vec<(&Node, std::slice::Iter<'_, Node>)> = Vec::new();
    if close_if_leaf(root, &mut out) {
        return Ok(out);
    }
    stack.push((root, root.children().iter()));
    while let Some((parent, siblings)) = stack.last_mut() {
        match siblings.next() {
            Some(child) => {
                let depth = stack.len();
                newline(&mut out, depth);
                open(child, &mut out)?;
                if !close_if_leaf(child, &mut out) {
                    stack.push((child, child.children().iter()));
                }
            }
            None => {
                let tag = &parent.tag;
                stack.pop();
                newline(&mut out, stack.len());
                out.push_str("</");
                out.push_str(tag);
                out.push('>');
            }
        }
    }
    Ok(out)
}

/// Writes `<tag attrs` (no closing bracket).
fn open(node: &Node, out: &mut String) -> Result<()> {
    check_name(&node.tag)?;
    out.push('<');
    out.push_str(&node.tag);
    for (k, v) in &node.attrs {
        check_name(k)?;
        out.push(' ');
        out.push_str(k);
        out.push_str("=\"");
        escape_into(v, out)?;
        out.push('"');
    }
    Ok(())
}

/// Finishes a node that has no children (returns `true`), or writes `>` and returns `false`.
fn close_if_leaf(node: &Node, out: &mut String) -> bool {
    match &node.content {
        Content::Empty => out.push_str("/>"),
        Content::Nodes(c) if c.is_empty() => out.push_str("/>"),
        Content::Bytes(b) => {
            out.push('>');
            BASE64.encode_string(b, out);
            out.push_str("</");
            out.push_str(&node.tag);
            out.push('>');
        }
        Content::Nodes(_) => {
            out.push('>');
            return false;
        }
    }
    true
}

fn escape_into(v: &str, out: &mut String) -> Result<()> {
    for c in v.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if is_xml_char(c) => out.push(c),
            _ => return Err(Error::NotXmlRepresentable("a character XML 1.0 cannot carry")),
        }
    }
    Ok(())
}

/// XML 1.0 `Char` (Rust strings have no surrogates).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{FFFD}' | '\u{10000}'..)
}

/// The subset of XML names this codec writes and reads.
fn is_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_' | b':'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-'))
}

fn check_name(s: &str) -> Result<()> {
    if is_name(s) { Ok(()) } else { Err(Error::NotXmlRepresentable("not an XML name")) }
}

// ---------------------------------------------------------------------------------------------
// Reader

/// An element being read.
struct Open {
    node: Node,
    children: Vec<Node>,
    text: String,
}

/// Reads one stanza from XML text within `limits`.
pub fn from_str_with(text: &str, limits: &Limits) -> Result<Node> {
    if text.len() > limits.max_size {
        return Err(Error::LimitExceeded { limit: "stanza size", max: limits.max_size });
    }
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Node> = None;
    let mut nodes = 0usize;
    let mut first = true;
    loop {
        let event = reader.read_event().map_err(map_xml_error)?;
        let at_start = std::mem::take(&mut first);
        match event {
            Event::Decl(_) if at_start => {}
            Event::Decl(_) => {
                return Err(Error::InvalidXml { reason: "misplaced XML declaration" });
            }
            Event::DocType(t) => {
                return Err(if t.contains("<!ENTITY") {
                    Error::EntityDeclarationForbidden
                } else {
                    Error::DtdForbidden
                });
            }
            Event::PI(_) => return Err(Error::ProcessingInstructionForbidden),
            Event::Comment(_) => {}
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(Error::InvalidXml { reason: "content after the root element" });
            }
            Event::Start(e) => {
                let node = element(&e, limits, stack.len() + 1, &mut nodes)?;
                stack.push(Open { node, children: Vec::new(), text: String::new() });
            }
            Event::Empty(e) => {
                let node = element(&e, limits, stack.len() + 1, &mut nodes)?;
                attach(node, &mut stack, &mut root);
            }
            Event::End(_) => {
                let open = stack.pop().ok_or(Error::InvalidXml { reason: "unmatched end tag" })?;
                let mut node = open.node;
                node.content = if open.children.is_empty() {
                    Content::Bytes(decode_base64(&open.text)?)
                } else if open.text.bytes().all(|b| b.is_ascii_whitespace()) {
                    Content::Nodes(open.children)
                } else {
                    return Err(Error::InvalidXml { reason: "text mixed with elements" });
                };
                attach(node, &mut stack, &mut root);
            }
            Event::Text(t) => match stack.last_mut() {
                Some(open) => open.text.push_str(&t.xml10_content()),
                None if t.bytes().all(|b| b.is_ascii_whitespace()) => {}
                None => return Err(Error::InvalidXml { reason: "text outside the root element" }),
            },
            Event::CData(t) => match stack.last_mut() {
                Some(open) => open.text.push_str(&t.xml10_content()),
                None => return Err(Error::InvalidXml { reason: "text outside the root element" }),
            },
            Event::GeneralRef(r) => {
                let Some(open) = stack.last_mut() else {
                    return Err(Error::InvalidXml { reason: "text outside the root element" });
                };
                match r.resolve_char_ref() {
                    Ok(Some(c)) => open.text.push(c),
                    Ok(None) => match resolve_predefined_entity(&r) {
                        Some(s) => open.text.push_str(s),
                        None => return Err(Error::UnknownEntity),
                    },
                    Err(_) => {
                        return Err(Error::InvalidXml { reason: "invalid character reference" });
                    }
                }
            }
            Event::Eof => {
                return match root {
                    Some(node) if stack.is_empty() => Ok(node),
                    _ => Err(Error::Truncated),
                };
            }
        }
    }
}

/// A new element at `depth` with its attributes.
fn element(e: &BytesStart<'_>, limits: &Limits, depth: usize, nodes: &mut usize) -> Result<Node> {
    let max_depth = limits.max_depth.min(DEPTH_CEILING);
    if depth > max_depth {
        return Err(Error::TooDeep { max: max_depth });
    }
    *nodes += 1;
    if *nodes > limits.max_nodes {
        return Err(Error::LimitExceeded { limit: "node count", max: limits.max_nodes });
    }
    let tag = e.name().0;
    if !is_name(tag) {
        return Err(Error::InvalidXml { reason: "unsupported element name" });
    }
    let mut node = Node::new(tag);
    for attr in e.attributes() {
        let attr = attr.map_err(|e| match e {
            AttrError::Duplicated(..) => Error::DuplicateAttribute,
            _ => Error::InvalidXml { reason: "malformed attribute" },
        })?;
        if node.attrs.len() == limits.max_attrs {
            return Err(Error::LimitExceeded { limit: "attribute count", max: limits.max_attrs });
        }
        let name = attr.key.0;
        if !is_name(name) {
            return Err(Error::InvalidXml { reason: "unsupported attribute name" });
        }
        let value =
            attr.normalized_value(quick_xml::XmlVersion::Implicit1_0).map_err(map_xml_error)?;
        if !value.chars().all(is_xml_char) {
            return Err(Error::InvalidXml { reason: "character not allowed in XML" });
        }
        node.attrs.push((name.to_owned(), value.into_owned()));
    }
    Ok(node)
}

fn attach(node: Node, stack: &mut [Open], root: &mut Option<Node>) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(node),
        None => *root = Some(node),
    }
}

fn decode_base64(text: &str) -> Result<Vec<u8>> {
    if text.bytes().any(|b| b.is_ascii_whitespace()) {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        BASE64.decode(compact).map_err(|_| Error::InvalidBase64)
    } else {
        BASE64.decode(text).map_err(|_| Error::InvalidBase64)
    }
}

fn map_xml_error(e: quick_xml::Error) -> Error {
    use quick_xml::escape::EscapeError;
    match e {
        quick_xml::Error::Escape(EscapeError::UnrecognizedEntity(..)) => Error::UnknownEntity,
        quick_xml::Error::Escape(_) => Error::InvalidXml { reason: "invalid escape" },
        quick_xml::Error::IllFormed(_) => Error::InvalidXml { reason: "ill-formed document" },
        quick_xml::Error::InvalidAttr(AttrError::Duplicated(..)) => Error::DuplicateAttribute,
        quick_xml::Error::InvalidAttr(_) => Error::InvalidXml { reason: "malformed attribute" },
        _ => Error::InvalidXml { reason: "syntax error" },
    }
}

#[cfg(test)]
mod tests;
