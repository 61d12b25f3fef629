//! `Debug` for the content protobufs, without their content: texts, ids, keys, hashes, paths
//! and names appear only as lengths. The generated types have no `Debug` of their own
//! (`skip_debug` in `cargo xtask codegen`), so nothing can print a message by accident.

use std::fmt;

use crate::proto::{
    Delete, Edit, Media, MediaType, Message, QuotedReference, Reaction, Text, Transport,
    Unsupported, message,
};

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("message", &self.message)
            .field("sender_key_distribution_len", &self.sender_key_distribution.len())
            .field("padding_len", &self.padding.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id_len", &self.id.len())
            .field("quoted", &self.quoted.is_some())
            .field("content", &self.content)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for message::Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            message::Content::Text(t) => f.debug_tuple("Text").field(t).finish(),
            message::Content::Image(m) => f.debug_tuple("Image").field(m).finish(),
            message::Content::Video(m) => f.debug_tuple("Video").field(m).finish(),
            message::Content::Voice(m) => f.debug_tuple("Voice").field(m).finish(),
            message::Content::File(m) => f.debug_tuple("File").field(m).finish(),
            message::Content::Reaction(r) => f.debug_tuple("Reaction").field(r).finish(),
            message::Content::Edit(e) => f.debug_tuple("Edit").field(e).finish(),
            message::Content::Delete(d) => f.debug_tuple("Delete").field(d).finish(),
            message::Content::Unsupported(u) => f.debug_tuple("Unsupported").field(u).finish(),
        }
    }
}

impl fmt::Debug for QuotedReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotedReference").finish_non_exhaustive()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Text").field("body_len", &self.body.len()).finish()
    }
}

impl fmt::Debug for Media {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Media")
            .field("media_type", &MediaType::try_from(self.media_type).ok())
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Reaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reaction").finish_non_exhaustive()
    }
}

impl fmt::Debug for Edit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Edit").field("text", &self.text).finish_non_exhaustive()
    }
}

impl fmt::Debug for Delete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delete").finish_non_exhaustive()
    }
}

impl fmt::Debug for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unsupported").field("kind_len", &self.kind.len()).finish_non_exhaustive()
    }
}

impl fmt::Debug for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_content() {
        let m = Message {
            id: "0123456789abcdef0123456789abcdef".into(),
            content: Some(message::Content::Text(Text { body: "attack at dawn".into() })),
            ..Default::default()
        };
        let t = Transport { message: Some(m), ..Default::default() };
        let shown = format!("{t:?}");
        assert!(!shown.contains("attack"), "{shown}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("body_len: 14"), "{shown}");
    }
}
