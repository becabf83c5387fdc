//! Rule files: a serde mirror of the TOML (`raw`), a validating `compile` step that resolves
//! every name and reports `file:line:col` problems, and a pure `apply` that maps a postback
//! into Scaleo's body. Nothing here does I/O except `load_dir` reading the files.

pub mod value;
