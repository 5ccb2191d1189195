//! The data pipeline: documents from files, a tokenizer, best-fit packing into rows, and
//! the packed-row stream whose state a checkpoint stores.

pub mod packing;
pub mod source;
pub mod stream;
pub mod tokenizer;

pub use packing::{PackedRow, Packer};
pub use source::{resolve_paths, DocumentCursor, Documents, TextSplit};
pub use stream::{split_documents, RowStream, Split, StreamState};
pub use tokenizer::RunTokenizer;
