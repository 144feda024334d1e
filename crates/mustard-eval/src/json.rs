//! JSON parsing whose errors name the record: serde_json reports a line and a column, this
//! module turns them into a path such as `annotations[12].bbox`.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Reads a whole file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses `bytes` as a `T`; errors carry `origin` and the JSON path of the failing value.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8], origin: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| error(bytes, origin, &e))
}

fn error(bytes: &[u8], origin: &str, e: &serde_json::Error) -> Error {
    let (line, column) = (e.line(), e.column());
    let offset = byte_offset(bytes, line, column);
    let full = e.to_string();
    let suffix = format!(" at line {line} column {column}");
    let mut message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
    if let Some(token) = non_finite_token(bytes, offset) {
        message = format!("`{token}` is not a JSON number (scores and coordinates must be finite)");
    }
    Error::Json {
        origin: origin.to_string(),
        location: location(bytes, offset),
        line,
        column,
        message,
    }
}

/// The byte offset of a 1-based (line, column) position, clamped to the input.
fn byte_offset(bytes: &[u8], line: usize, column: usize) -> usize {
    if line == 0 {
        return bytes.len();
    }
    let mut start = 0;
    let mut current = 1;
    while current < line {
        match bytes[start..].iter().position(|&b| b == b'\n') {
            Some(p) => start += p + 1,
            None => return bytes.len(),
        }
        current += 1;
    }
    (start + column.saturating_sub(1)).min(bytes.len())
}

/// Python's `json.dump` writes NaN and infinities as bare words that JSON does not allow; the
/// error then says so instead of "expected value". serde_json reports the error on the
/// token's first or last character.
fn non_finite_token(bytes: &[u8], offset: usize) -> Option<&'static str> {
    let lo = offset.saturating_sub(9);
    let hi = (offset + 9).min(bytes.len());
    let window = &bytes[lo..hi];
    ["-Infinity", "Infinity", "NaN"].into_iter().find(|token| {
        window.windows(token.len()).enumerate().any(|(i, w)| {
            w == token.as_bytes() && lo + i <= offset && offset <= lo + i + token.len()
        })
    })
}

enum Frame {
    Object {
        key: Option<String>,
        expect_key: bool,
    },
    Array {
        index: usize,
    },
}

/// The path of the innermost value open at `offset` (the byte there included, as serde_json
/// reports errors on a value's last byte), e.g. `annotations[12].bbox` or `[7]`. A scan that
/// tracks containers, keys and array indices; it need not validate.
pub(crate) fn location(bytes: &[u8], offset: usize) -> String {
    const MAX_KEY: usize = 64;
    let mut stack: Vec<Frame> = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut capturing = false;
    let mut key: Vec<u8> = Vec::new();
    for &b in &bytes[..(offset + 1).min(bytes.len())] {
        if in_string {
            if escaped {
                escaped = false;
                if capturing && key.len() < MAX_KEY {
                    key.push(b);
                }
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                if capturing {
                    capturing = false;
                    if let Some(Frame::Object { key: k, .. }) = stack.last_mut() {
                        *k = Some(String::from_utf8_lossy(&key).into_owned());
                    }
                }
            } else if capturing && key.len() < MAX_KEY {
                key.push(b);
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                if let Some(Frame::Object {
                    expect_key: true, ..
                }) = stack.last()
                {
                    capturing = true;
                    key.clear();
                }
            }
            b'{' => stack.push(Frame::Object {
                key: None,
                expect_key: true,
            }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array { index }) => *index += 1,
                Some(Frame::Object { key, expect_key }) => {
                    *key = None;
                    *expect_key = true;
                }
                None => {}
            },
            b':' => {
                if let Some(Frame::Object { expect_key, .. }) = stack.last_mut() {
                    *expect_key = false;
                }
            }
            _ => {}
        }
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object { key: Some(k), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array { index } => path.push_str(&format!("[{index}]")),
        }
    }
    if path.is_empty() {
        path.push_str("the top level");
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str, marker: &str, expect: &str) {
        let offset = json.find(marker).expect("marker");
        assert_eq!(location(json.as_bytes(), offset), expect, "{json}");
    }

    #[test]
    fn location_names_keys_and_indices() {
        let doc = r#"{"images": [{"id": 1}], "annotations": [{"id": 1}, {"id": 2, "bbox": [1, 2, "x"]}]}"#;
        check(doc, "\"x\"", "annotations[1].bbox[2]");
        check(doc, "{\"id\": 2", "annotations[1]");
        check(doc, "[{\"id\": 1}]", "images[0]");
        check(r#"[{"score": 1}, {"score": NaN}]"#, "NaN", "[1].score");
        check(r#"{"a\"b": [1, {"k": "}"}, 3]}"#, "3]", "a\"b[2]");
        check("  ", " ", "the top level");
    }

    #[test]
    fn byte_offset_follows_lines() {
        let text = b"ab\ncde\nf";
        assert_eq!(byte_offset(text, 1, 2), 1);
        assert_eq!(byte_offset(text, 2, 3), 5);
        assert_eq!(byte_offset(text, 3, 1), 7);
        assert_eq!(byte_offset(text, 9, 1), 8);
        assert_eq!(byte_offset(text, 0, 0), 8);
    }
}
