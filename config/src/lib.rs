//! Ferry's configuration: one typed tree for every process.
