//! The `ociregistry` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    ociregistry::cli::run()
}
