//! Where in a TOML file a problem is: byte spans become 1-based line numbers
//! and dotted key paths (`arrival.poisson.rate`), so every error about a spec
//! or the suites file can name the file, the line and the field.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

/// A problem in a TOML file, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidToml {
    pub file: PathBuf,
    /// 1-based; `None` when the problem has no place in the text (an empty
    /// file, a field that is absent).
    pub line: Option<usize>,
    /// Dotted key path, `None` for a syntax error or the document as a whole.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for InvalidToml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl InvalidToml {
    /// A problem with the field at dotted `path` of the TOML document
    /// `text` read from `file`: for checks made outside this crate (the
    /// pipeline knows the metric names and the engine's knobs) that still
    /// name the file, line and field.
    pub fn at_field(file: &Path, text: &str, path: &str, message: impl Into<String>) -> Self {
        SourceMap::new(file, text).invalid_field(path, message)
    }
}

/// One key of the document with the spans of its key and of its value.
struct Entry {
    path: String,
    key: Range<usize>,
    value: Range<usize>,
}

/// Index of a TOML document's keys by span and by path.
pub(crate) struct SourceMap {
    file: PathBuf,
    line_starts: Vec<usize>,
    entries: Vec<Entry>,
}

impl SourceMap {
    /// Builds the index; a document that does not parse gets line numbers
    /// but no keys (its syntax error already carries a span).
    pub(crate) fn new(file: &Path, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let mut entries = Vec::new();
        if let Ok(doc) = DeTable::parse(text) {
            collect_table(doc.get_ref(), "", &mut entries);
        }
        SourceMap {
            file: file.to_path_buf(),
            line_starts,
            entries,
        }
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line(&self, byte: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= byte)
    }

    /// The innermost key whose key or value span holds `span`.
    fn field_at(&self, span: &Range<usize>) -> Option<&str> {
        if span.is_empty() && span.start == 0 {
            return None;
        }
        let holds = |r: &Range<usize>| r.start <= span.start && span.end <= r.end.max(r.start + 1);
        self.entries
            .iter()
            .filter_map(|e| {
                [&e.key, &e.value]
                    .into_iter()
                    .filter(|r| holds(r))
                    .map(|r| r.end - r.start)
                    .min()
                    .map(|len| (len, std::cmp::Reverse(e.path.len()), e.path.as_str()))
            })
            .min()
            .map(|(_, _, path)| path)
    }

    /// Line of the key at `path`; for an absent key, the line of its nearest
    /// present parent.
    fn line_of_field(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(e) = self.entries.iter().find(|e| e.path == path) {
                return Some(self.line(e.key.start));
            }
            path = &path[..path.rfind(['.', '['])?];
        }
    }

    /// A semantic problem with the field at `path` (dotted).
    pub(crate) fn invalid_field(&self, path: &str, message: impl Into<String>) -> InvalidToml {
        InvalidToml {
            file: self.file.clone(),
            line: self.line_of_field(path),
            field: Some(path.to_string()),
            message: message.into(),
        }
    }

    /// A problem with the document as a whole.
    pub(crate) fn invalid_document(&self, message: impl Into<String>) -> InvalidToml {
        InvalidToml {
            file: self.file.clone(),
            line: None,
            field: None,
            message: message.into(),
        }
    }

    /// Locates an error of the toml parser or of serde.
    pub(crate) fn invalid_from_toml(&self, err: &toml::de::Error) -> InvalidToml {
        let message = err.message().trim().to_string();
        let span = err.span();
        let mut field = span
            .as_ref()
            .and_then(|s| self.field_at(s))
            .map(str::to_string);
        // serde reports a missing field at its parent table: name the field.
        if let Some(missing) = backticked_after(&message, "missing field ") {
            field = Some(match field {
                Some(parent) => format!("{parent}.{missing}"),
                None => missing.to_string(),
            });
        }
        let line = match (&span, &field) {
            (Some(s), _) if !(s.is_empty() && s.start == 0) => Some(self.line(s.start)),
            (_, Some(f)) => self.line_of_field(f),
            _ => None,
        };
        InvalidToml {
            file: self.file.clone(),
            line,
            field,
            message,
        }
    }
}

/// The text between the backticks that follow `prefix` in `message`.
fn backticked_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    let rest = rest.strip_prefix('`')?;
    Some(&rest[..rest.find('`')?])
}

fn collect_table(table: &DeTable<'_>, prefix: &str, out: &mut Vec<Entry>) {
    for (key, value) in table.iter() {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        out.push(Entry {
            path: path.clone(),
            key: key.span(),
            value: value.span(),
        });
        collect_value(value.get_ref(), &path, out);
    }
}

fn collect_value(value: &DeValue<'_>, path: &str, out: &mut Vec<Entry>) {
    match value {
        DeValue::Table(t) => collect_table(t, path, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                out.push(Entry {
                    path: item_path.clone(),
                    key: item.span(),
                    value: item.span(),
                });
                collect_value(item.get_ref(), &item_path, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "name = \"a\"\n\n[arrival.poisson]\nrate = 2\n\n[len]\nuniform = { min = 3, max = 4 }\nlist = [1, 2]\n";

    fn map() -> SourceMap {
        SourceMap::new(Path::new("x.toml"), DOC)
    }

    #[test]
    fn lines_are_one_based() {
        let m = map();
        assert_eq!(m.line(0), 1);
        assert_eq!(m.line(DOC.find("rate").unwrap()), 4);
        assert_eq!(m.line(DOC.find("uniform").unwrap()), 7);
    }

    #[test]
    fn field_at_finds_innermost_key() {
        let m = map();
        let at = DOC.find("= 4").unwrap() + 2;
        assert_eq!(m.field_at(&(at..at + 1)), Some("len.uniform.max"));
        let at = DOC.find("rate").unwrap();
        assert_eq!(m.field_at(&(at..at + 4)), Some("arrival.poisson.rate"));
        let at = DOC.find("2]").unwrap();
        assert_eq!(m.field_at(&(at..at + 1)), Some("len.list[1]"));
    }

    #[test]
    fn absent_field_points_at_its_parent() {
        let m = map();
        assert_eq!(m.line_of_field("arrival.poisson.rate"), Some(4));
        assert_eq!(m.line_of_field("len.uniform.mean"), Some(7));
        assert_eq!(m.line_of_field("slo.ttft_ms"), None);
        let e = m.invalid_field("len.uniform.max", "must be >= min");
        assert_eq!(
            e.to_string(),
            "x.toml:7: field `len.uniform.max`: must be >= min"
        );
    }
}
