//! Documents from text, JSONL and Parquet files, streamed one at a time (the corpus never
//! has to fit in memory), with a cursor that a checkpoint stores to resume at the same
//! document.
//!
//! - `.txt` and any other extension: plain text, one document per block of lines separated
//!   by blank lines ([`TextSplit::Blocks`]) or one per non-empty line ([`TextSplit::Lines`]);
//! - `.jsonl` / `.json`: one JSON object per line, its `text` field;
//! - `.parquet`: the `text` column (UTF-8), row group by row group.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde::{Deserialize, Serialize};

/// How a plain-text file is cut into documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TextSplit {
    /// Blocks of lines separated by one or more blank lines.
    #[default]
    Blocks,
    /// Every non-empty line.
    Lines,
}

/// Where a [`Documents`] stream stands: the next document it yields is document `doc` of
/// file `file` in pass `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DocumentCursor {
    /// Completed passes over all files.
    pub epoch: u64,
    /// Index into the file list.
    pub file: usize,
    /// Documents of that file already yielded.
    pub doc: u64,
}

/// Expands globs and plain paths into a sorted, de-duplicated file list (sorted, so that a
/// resumed run sees the files in the same order).
///
/// # Errors
/// A malformed pattern, or a pattern or path that matches no file.
pub fn resolve_paths(patterns: &[String]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for pattern in patterns {
        let path = Path::new(pattern);
        if path.is_file() {
            files.push(path.to_path_buf());
            continue;
        }
        let matches: Vec<PathBuf> = glob::glob(pattern)
            .with_context(|| format!("bad glob pattern {pattern:?}"))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        if matches.is_empty() {
            bail!("{pattern:?} matches no file");
        }
        let mut matches = matches;
        matches.sort();
        files.extend(matches);
    }
    files.dedup();
    if files.is_empty() {
        bail!("no data files given (set data.train)");
    }
    Ok(files)
}

type DocIter = Box<dyn Iterator<Item = Result<String>> + Send>;

/// A stream of documents over a list of files, optionally restarting at the end (`cycle`)
/// for multi-epoch training.
pub struct Documents {
    files: Vec<PathBuf>,
    split: TextSplit,
    cycle: bool,
    cursor: DocumentCursor,
    current: Option<DocIter>,
    yielded_in_pass: bool,
}

impl Documents {
    /// Opens the stream at `cursor` (skipping the documents before it in its file).
    pub fn new(files: Vec<PathBuf>, split: TextSplit, cycle: bool, cursor: DocumentCursor) -> Self {
        Self {
            files,
            split,
            cycle,
            cursor,
            current: None,
            yielded_in_pass: true,
        }
    }

    /// The position of the next document.
    pub fn cursor(&self) -> DocumentCursor {
        self.cursor
    }

    fn open_current(&mut self) -> Result<()> {
        let path = &self.files[self.cursor.file];
        let mut iter = open(path, self.split)?;
        for skipped in 0..self.cursor.doc {
            match iter.next() {
                Some(doc) => {
                    doc?;
                }
                None => bail!(
                    "{} has only {skipped} documents, but the checkpoint's data cursor is at \
                     document {}: was the file changed since?",
                    path.display(),
                    self.cursor.doc
                ),
            }
        }
        self.current = Some(iter);
        Ok(())
    }
}

impl Iterator for Documents {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.cursor.file >= self.files.len() {
                // A pass without a single document would make a cycling stream spin.
                if !self.cycle || !self.yielded_in_pass {
                    return None;
                }
                self.cursor = DocumentCursor {
                    epoch: self.cursor.epoch + 1,
                    file: 0,
                    doc: 0,
                };
                self.yielded_in_pass = false;
            }
            if self.current.is_none() {
                if let Err(e) = self.open_current() {
                    return Some(Err(e));
                }
            }
            match self.current.as_mut().and_then(Iterator::next) {
                Some(Ok(doc)) => {
                    self.cursor.doc += 1;
                    self.yielded_in_pass = true;
                    return Some(Ok(doc));
                }
                Some(Err(e)) => return Some(Err(e)),
                None => {
                    self.current = None;
                    self.cursor.file += 1;
                    self.cursor.doc = 0;
                }
            }
        }
    }
}

/// The documents of one file, lazily.
fn open(path: &Path, split: TextSplit) -> Result<DocIter> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let display = path.display().to_string();
    match ext {
        "parquet" => parquet_texts(path),
        "jsonl" | "json" => {
            let file = File::open(path).with_context(|| format!("opening {display}"))?;
            let lines = BufReader::new(file).lines().enumerate();
            Ok(Box::new(lines.filter_map(move |(n, line)| {
                let line = match line {
                    Ok(line) => line,
                    Err(e) => return Some(Err(anyhow!("reading {display}: {e}"))),
                };
                if line.trim().is_empty() {
                    return None;
                }
                let text = serde_json::from_str::<serde_json::Value>(&line)
                    .map_err(|e| anyhow!("{display}:{}: not JSON: {e}", n + 1))
                    .and_then(|v| match v.get("text") {
                        Some(serde_json::Value::String(s)) => Ok(s.clone()),
                        _ => Err(anyhow!("{display}:{}: no string field \"text\"", n + 1)),
                    });
                Some(text).filter(|t| !matches!(t, Ok(s) if s.trim().is_empty()))
            })))
        }
        _ => {
            let file = File::open(path).with_context(|| format!("opening {display}"))?;
            let lines = BufReader::new(file).lines();
            Ok(match split {
                TextSplit::Lines => Box::new(lines.filter_map(move |line| match line {
                    Ok(l) if l.trim().is_empty() => None,
                    Ok(l) => Some(Ok(l)),
                    Err(e) => Some(Err(anyhow!("reading {display}: {e}"))),
                })),
                TextSplit::Blocks => Box::new(Blocks {
                    lines: Box::new(lines),
                    display,
                }),
            })
        }
    }
}

/// Blank-line-separated blocks of a text file.
struct Blocks {
    lines: Box<dyn Iterator<Item = std::io::Result<String>> + Send>,
    display: String,
}

impl Iterator for Blocks {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        let mut block = String::new();
        for line in self.lines.by_ref() {
            let line = match line {
                Ok(line) => line,
                Err(e) => return Some(Err(anyhow!("reading {}: {e}", self.display))),
            };
            if line.trim().is_empty() {
                if !block.is_empty() {
                    return Some(Ok(block));
                }
                continue;
            }
            if !block.is_empty() {
                block.push('\n');
            }
            block.push_str(&line);
        }
        (!block.is_empty()).then_some(Ok(block))
    }
}

/// The `text` column of a Parquet file, row by row (the row API reads one row group at a
/// time).
fn parquet_texts(path: &Path) -> Result<DocIter> {
    let display = path.display().to_string();
    let file = File::open(path).with_context(|| format!("opening {display}"))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{display} is not a readable Parquet file"))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let column = schema
        .columns()
        .iter()
        .position(|c| c.name() == "text")
        .ok_or_else(|| anyhow!("{display} has no column \"text\""))?;
    let projection = schema.column(column).self_type_ptr();
    // The projection is a schema with the root's name and the one column.
    let root = reader
        .metadata()
        .file_metadata()
        .schema()
        .name()
        .to_string();
    let projection = parquet::schema::types::Type::group_type_builder(&root)
        .with_fields(vec![projection])
        .build()
        .context("building the Parquet projection")?;
    let rows = reader
        .into_iter()
        .project(Some(projection))
        .with_context(|| format!("projecting {display} onto \"text\""))?;
    Ok(Box::new(rows.filter_map(move |row| {
        let row = match row {
            Ok(row) => row,
            Err(e) => return Some(Err(anyhow!("reading {display}: {e}"))),
        };
        match row.get_column_iter().next().map(|(_, field)| field) {
            Some(Field::Str(s)) if !s.trim().is_empty() => Some(Ok(s.clone())),
            Some(Field::Str(_)) | Some(Field::Null) => None,
            other => Some(Err(anyhow!(
                "{display}: column \"text\" holds {other:?}, not UTF-8 strings"
            ))),
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path
    }

    fn collect(files: Vec<PathBuf>, split: TextSplit) -> Vec<String> {
        Documents::new(files, split, false, DocumentCursor::default())
            .collect::<Result<_>>()
            .unwrap()
    }

    #[test]
    fn text_blocks_lines_and_jsonl_give_their_documents() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let txt = write(dir, "a.txt", "one\ntwo\n\n\nthree\n\n");
        let jsonl = write(
            dir,
            "b.jsonl",
            "{\"text\": \"four\"}\n\n{\"text\": \"five\", \"id\": 2}\n",
        );
        assert_eq!(
            collect(vec![txt.clone()], TextSplit::Blocks),
            ["one\ntwo", "three"]
        );
        assert_eq!(
            collect(vec![txt.clone()], TextSplit::Lines),
            ["one", "two", "three"]
        );
        assert_eq!(
            collect(vec![txt, jsonl], TextSplit::Blocks),
            ["one\ntwo", "three", "four", "five"]
        );
    }

    #[test]
    fn a_cursor_resumes_at_the_same_document_and_cycling_counts_epochs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let a = write(dir, "a.txt", "1\n\n2\n\n3\n");
        let b = write(dir, "b.txt", "4\n\n5\n");
        let mut docs = Documents::new(
            vec![a.clone(), b.clone()],
            TextSplit::Blocks,
            true,
            DocumentCursor::default(),
        );
        let first: Vec<String> = docs.by_ref().take(4).map(Result::unwrap).collect();
        assert_eq!(first, ["1", "2", "3", "4"]);
        let cursor = docs.cursor();
        assert_eq!(
            cursor,
            DocumentCursor {
                epoch: 0,
                file: 1,
                doc: 1
            }
        );
        let rest: Vec<String> = docs.take(3).map(Result::unwrap).collect();
        let resumed: Vec<String> = Documents::new(vec![a, b], TextSplit::Blocks, true, cursor)
            .take(3)
            .map(Result::unwrap)
            .collect();
        assert_eq!(rest, ["5", "1", "2"]);
        assert_eq!(resumed, rest);
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let bad = write(dir, "bad.jsonl", "{\"title\": \"x\"}\n");
        let err = collect_err(vec![bad]);
        assert!(
            err.contains("bad.jsonl:1: no string field \"text\""),
            "{err}"
        );
        let not_parquet = write(dir, "x.parquet", "not parquet");
        assert!(collect_err(vec![not_parquet]).contains("not a readable Parquet file"));
        let err = resolve_paths(&[format!("{}/*.nothing", dir.display())]).unwrap_err();
        assert!(err.to_string().contains("matches no file"), "{err}");
    }

    #[test]
    fn parquet_text_column_is_read_row_by_row() {
        use parquet::basic::Compression;
        use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        use parquet::schema::parser::parse_message_type;
        use std::sync::Arc;

        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("c.parquet");
        let schema = Arc::new(
            parse_message_type("message m { REQUIRED INT64 id; REQUIRED BYTE_ARRAY text (UTF8); }")
                .unwrap(),
        );
        let props = Arc::new(
            WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build(),
        );
        let mut writer =
            SerializedFileWriter::new(File::create(&path).unwrap(), schema, props).unwrap();
        for texts in [["alpha", "beta"], ["", "gamma"]] {
            let mut group = writer.next_row_group().unwrap();
            let mut col = group.next_column().unwrap().unwrap();
            col.typed::<Int64Type>()
                .write_batch(&[1, 2], None, None)
                .unwrap();
            col.close().unwrap();
            let mut col = group.next_column().unwrap().unwrap();
            let values: Vec<ByteArray> = texts.iter().map(|t| ByteArray::from(*t)).collect();
            col.typed::<ByteArrayType>()
                .write_batch(&values, None, None)
                .unwrap();
            col.close().unwrap();
            group.close().unwrap();
        }
        writer.close().unwrap();
        assert_eq!(
            collect(vec![path], TextSplit::Blocks),
            ["alpha", "beta", "gamma"]
        );
    }

    fn collect_err(files: Vec<PathBuf>) -> String {
        let result: Result<Vec<String>> =
            Documents::new(files, TextSplit::Blocks, false, DocumentCursor::default()).collect();
        format!("{:#}", result.unwrap_err())
    }
}
