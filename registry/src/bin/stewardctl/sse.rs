//! A small incremental parser for server-sent events (`id:`, `event:`, `data:` lines).

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Feeds on arbitrary chunks of the byte stream and yields complete events.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    /// Adds a chunk (which may end mid-line or mid-character) and returns the events completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseMessage> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut raw: Vec<u8> = self.buf.drain(..=pos).collect();
            raw.pop();
            if raw.last() == Some(&b'\r') {
                raw.pop();
            }
            let line = String::from_utf8_lossy(&raw);
            if let Some(m) = self.line(&line) {
                out.push(m);
            }
        }
        out
    }

    fn line(&mut self, line: &str) -> Option<SseMessage> {
        if line.is_empty() {
            // A blank line dispatches; without data there is nothing to dispatch.
            let id = self.id.take();
            let event = self.event.take();
            if self.data.is_empty() {
                return None;
            }
            let data = std::mem::take(&mut self.data).join("\n");
            return Some(SseMessage { id, event, data });
        }
        if line.starts_with(':') {
            return None; // comment, e.g. a keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "id" => self.id = Some(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            "data" => self.data.push(value.to_string()),
            _ => {} // `retry` and unknown fields are ignored
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"id: 7\nevent: ev").is_empty());
        assert!(p.push(b"ent\ndata: {\"seq\":7}\n").is_empty());
        let got = p.push(b"\n");
        assert_eq!(
            got,
            vec![SseMessage {
                id: Some("7".into()),
                event: Some("event".into()),
                data: "{\"seq\":7}".into(),
            }]
        );
    }

    #[test]
    fn handles_crlf_comments_and_multiline_data() {
        let mut p = SseParser::default();
        let got = p.push(b": keep-alive\r\n\r\ndata:a\r\ndata: b\r\n\r\nid: 9\n\n");
        assert_eq!(
            got,
            vec![SseMessage {
                id: None,
                event: None,
                data: "a\nb".into(),
            }]
        );
    }

    #[test]
    fn several_events_in_one_chunk() {
        let mut p = SseParser::default();
        let got = p.push(b"id: 1\ndata: x\n\nid: 2\ndata: y\n\n");
        let ids: Vec<_> = got.iter().map(|m| m.id.clone()).collect();
        assert_eq!(ids, vec![Some("1".to_string()), Some("2".to_string())]);
    }

    #[test]
    fn multibyte_characters_may_be_split() {
        let mut p = SseParser::default();
        let bytes = "data: héllo\n\n".as_bytes();
        let (a, b) = bytes.split_at(8); // inside the two-byte "é"
        assert!(p.push(a).is_empty());
        let got = p.push(b);
        assert_eq!(got[0].data, "héllo");
    }
}
