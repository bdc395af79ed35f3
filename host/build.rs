//! Build script: generates the built-in hello-world image into `OUT_DIR`
//! ([`hello_image`]); nothing else is generated.

#[path = "build/hello_image.rs"]
mod hello_image;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=build/hello_image.rs");
    let out = std::env::var_os("OUT_DIR").ok_or("cargo sets OUT_DIR for build scripts")?;
    hello_image::write(std::path::Path::new(&out))?;
    Ok(())
}
