//! The built-in hello-world image, made from source at build time: for linux/amd64 and
//! linux/arm64 a tiny static ELF executable (machine code written out below, instruction by
//! instruction), packed as `/hello` in a one-file tar layer, gzip'd, with its OCI image config
//! and manifest, and one OCI image index over both. Every byte is a function of this file
//! (fixed times, owners and modes, one compressor pinned by `Cargo.lock`), so two builds give
//! the same digests. It writes files into `OUT_DIR` and a Rust file naming them with their
//! digests; it does not serve anything (`src/mirror/hello.rs` does).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// What `/hello` prints.
pub const MESSAGE: &str = "Hello from ociregistry!\n\n\
This message shows that your container runtime pulled an image through ociregistry\n\
with no upstream registry involved: the image is built into the ociregistry binary.\n\
Pull anything else through it (docker.io, quay.io, ghcr.io, ...) and it is cached.\n";

/// Where the program is loaded: the usual base of static executables, aligned to 64 KiB so
/// that kernels with 4K, 16K or 64K pages all map it.
const BASE: u64 = 0x40_0000;
/// ELF header (64 bytes) and one program header (56 bytes) precede the code.
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const CODE_OFFSET: usize = EHDR_SIZE + PHDR_SIZE;

/// An architecture the image is built for.
#[derive(Clone, Copy)]
pub struct Arch {
    /// OCI `architecture`.
    pub oci: &'static str,
    /// OCI `variant`, if any.
    pub variant: Option<&'static str>,
    /// ELF `e_machine`.
    pub machine: u16,
    /// The machine code (the message follows it directly).
    pub code: fn(msg_len: u32) -> Vec<u8>,
}

pub const ARCHES: [Arch; 2] = [
    Arch {
        oci: "amd64",
        variant: None,
        machine: 62, // EM_X86_64
        code: x86_64_code,
    },
    Arch {
        oci: "arm64",
        variant: Some("v8"),
        machine: 183, // EM_AARCH64
        code: aarch64_code,
    },
];

/// x86-64 Linux: the syscall number goes in `rax`, arguments in `rdi`, `rsi`, `rdx`;
/// `syscall` enters the kernel. write is 1, exit is 60.
fn x86_64_code(msg_len: u32) -> Vec<u8> {
    let mut c = Vec::new();
    // mov eax, 1            (B8 + imm32: write; writing eax zeroes the top of rax)
    c.extend([0xB8, 0x01, 0x00, 0x00, 0x00]);
    // mov edi, 1            (BF + imm32: fd 1, stdout)
    c.extend([0xBF, 0x01, 0x00, 0x00, 0x00]);
    // lea rsi, [rip + disp32]   (REX.W 8D /r, ModRM 0x35 = rsi, RIP-relative): the message,
    // which starts right after the last instruction; disp is counted from the end of this one.
    let lea_end = c.len() + 7;
    c.extend([0x48, 0x8D, 0x35]);
    let disp_at = c.len();
    c.extend([0, 0, 0, 0]);
    // mov edx, msg_len      (BA + imm32: count)
    c.push(0xBA);
    c.extend(msg_len.to_le_bytes());
    // syscall
    c.extend([0x0F, 0x05]);
    // mov eax, 60           (exit)
    c.extend([0xB8, 0x3C, 0x00, 0x00, 0x00]);
    // xor edi, edi          (status 0)
    c.extend([0x31, 0xFF]);
    // syscall
    c.extend([0x0F, 0x05]);
    let disp = (c.len() - lea_end) as u32;
    c[disp_at..disp_at + 4].copy_from_slice(&disp.to_le_bytes());
    c
}

/// AArch64 Linux: the syscall number goes in `x8`, arguments in `x0`, `x1`, `x2`; `svc #0`
/// enters the kernel. write is 64, exit is 93. Every instruction is 32 bits, little-endian.
fn aarch64_code(msg_len: u32) -> Vec<u8> {
    /// `movz Xd, #imm16`: 1 10 100101 hw=00 imm16 Rd.
    fn movz(rd: u32, imm16: u32) -> u32 {
        0xD280_0000 | ((imm16 & 0xFFFF) << 5) | rd
    }
    /// `adr Xd, #offset` (from this instruction): 0 immlo(2) 10000 immhi(19) Rd.
    fn adr(rd: u32, offset: u32) -> u32 {
        ((offset & 3) << 29) | 0x1000_0000 | (((offset >> 2) & 0x7_FFFF) << 5) | rd
    }
    const SVC_0: u32 = 0xD400_0001; // svc #0
    const N: u32 = 8; // instructions; the message starts at N * 4
    let words = [
        movz(0, 1),          // mov x0, #1          fd 1, stdout
        adr(1, (N - 1) * 4), // adr x1, message   (this is instruction 1)
        movz(2, msg_len),    // mov x2, #msg_len    count
        movz(8, 64),         // mov x8, #64         write
        SVC_0,               // svc #0
        movz(0, 0),          // mov x0, #0          status 0
        movz(8, 93),         // mov x8, #93         exit
        SVC_0,               // svc #0
    ];
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A static ELF64 little-endian executable: one `PT_LOAD` segment (read + execute) mapping
/// the whole file at [`BASE`]; no sections, no interpreter.
pub fn elf(arch: &Arch) -> Vec<u8> {
    let msg_len = MESSAGE.len() as u32;
    let code = (arch.code)(msg_len);
    let total = (CODE_OFFSET + code.len() + MESSAGE.len()) as u64;
    let entry = BASE + CODE_OFFSET as u64;
    let mut f = Vec::new();
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_SYSV, padding.
    f.extend([0x7F, b'E', b'L', b'F', 2, 1, 1, 0]);
    f.extend([0u8; 8]);
    f.extend(2u16.to_le_bytes()); // e_type: ET_EXEC
    f.extend(arch.machine.to_le_bytes()); // e_machine
    f.extend(1u32.to_le_bytes()); // e_version
    f.extend(entry.to_le_bytes()); // e_entry
    f.extend((EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    f.extend(0u64.to_le_bytes()); // e_shoff: no section headers
    f.extend(0u32.to_le_bytes()); // e_flags
    f.extend((EHDR_SIZE as u16).to_le_bytes()); // e_ehsize
    f.extend((PHDR_SIZE as u16).to_le_bytes()); // e_phentsize
    f.extend(1u16.to_le_bytes()); // e_phnum
    f.extend(64u16.to_le_bytes()); // e_shentsize
    f.extend(0u16.to_le_bytes()); // e_shnum
    f.extend(0u16.to_le_bytes()); // e_shstrndx
    // The program header.
    f.extend(1u32.to_le_bytes()); // p_type: PT_LOAD
    f.extend(5u32.to_le_bytes()); // p_flags: PF_R | PF_X
    f.extend(0u64.to_le_bytes()); // p_offset
    f.extend(BASE.to_le_bytes()); // p_vaddr
    f.extend(BASE.to_le_bytes()); // p_paddr
    f.extend(total.to_le_bytes()); // p_filesz
    f.extend(total.to_le_bytes()); // p_memsz
    f.extend(0x1_0000u64.to_le_bytes()); // p_align
    debug_assert_eq!(f.len(), CODE_OFFSET);
    f.extend(code);
    f.extend(MESSAGE.as_bytes());
    f
}

/// A ustar archive holding `hello` (mode 0755, owner 0:0, mtime 0).
pub fn tar(exe: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    let mut put = |at: usize, s: &[u8]| h[at..at + s.len()].copy_from_slice(s);
    put(0, b"hello"); // name
    put(100, b"0000755\0"); // mode
    put(108, b"0000000\0"); // uid
    put(116, b"0000000\0"); // gid
    put(124, format!("{:011o}\0", exe.len()).as_bytes()); // size
    put(136, b"00000000000\0"); // mtime
    put(148, b"        "); // chksum, counted as spaces
    put(156, b"0"); // typeflag: regular file
    put(257, b"ustar\0"); // magic
    put(263, b"00"); // version
    put(265, b"root"); // uname
    put(297, b"root"); // gname
    put(329, b"0000000\0"); // devmajor
    put(337, b"0000000\0"); // devminor
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut t = h.to_vec();
    t.extend(exe);
    t.resize(t.len().div_ceil(512) * 512, 0);
    t.extend([0u8; 1024]); // end of archive
    t
}

/// `bytes` gzip'd with no name and mtime 0.
pub fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes)?;
    enc.finish()
}

pub fn sha256(bytes: &[u8]) -> String {
    let mut s = String::from("sha256:");
    for b in Sha256::digest(bytes) {
        let _ = write!(s, "{b:02x}");
    }
    s
}

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One piece of the image.
struct Part {
    /// `index`, `manifest`, `config`, `layer` or (tests only) `elf`.
    role: &'static str,
    arch: Option<&'static str>,
    media_type: &'static str,
    bytes: Vec<u8>,
}

fn descriptor(media_type: &str, bytes: &[u8]) -> String {
    format!(
        r#"{{"mediaType":"{media_type}","digest":"{}","size":{}}}"#,
        sha256(bytes),
        bytes.len()
    )
}

fn parts() -> std::io::Result<Vec<Part>> {
    let mut parts = Vec::new();
    let mut entries = Vec::new();
    for arch in &ARCHES {
        let exe = elf(arch);
        let tar = tar(&exe);
        let layer = gzip(&tar)?;
        let variant = arch
            .variant
            .map(|v| format!(r#","variant":"{v}""#))
            .unwrap_or_default();
        let config = format!(
            concat!(
                r#"{{"architecture":"{arch}","os":"linux"{variant},"#,
                r#""config":{{"Cmd":["/hello"]}},"#,
                r#""rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}},"#,
                r#""history":[{{"created_by":"ociregistry build: hand-assembled /hello"}}]}}"#
            ),
            arch = arch.oci,
            variant = variant,
            diff_id = sha256(&tar),
        )
        .into_bytes();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
            descriptor(OCI_CONFIG, &config),
            descriptor(OCI_LAYER_GZIP, &layer),
        )
        .into_bytes();
        let d = descriptor(OCI_MANIFEST, &manifest);
        entries.push(format!(
            r#"{},"platform":{{"architecture":"{}","os":"linux"{variant}}}}}"#,
            &d[..d.len() - 1],
            arch.oci
        ));
        let arch_name = Some(arch.oci);
        for (role, media_type, bytes) in [
            ("manifest", OCI_MANIFEST, manifest),
            ("config", OCI_CONFIG, config),
            ("layer", OCI_LAYER_GZIP, layer),
            ("elf", "application/octet-stream", exe),
        ] {
            parts.push(Part {
                role,
                arch: arch_name,
                media_type,
                bytes,
            });
        }
    }
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        entries.join(",")
    );
    parts.insert(
        0,
        Part {
            role: "index",
            arch: None,
            media_type: OCI_INDEX,
            bytes: index.into_bytes(),
        },
    );
    Ok(parts)
}

/// Writes every part to `out/hello-world/` and `out/hello_world.rs`, the Rust table of them
/// that `src/mirror/hello.rs` includes.
pub fn write(out: &Path) -> std::io::Result<()> {
    let dir = out.join("hello-world");
    std::fs::create_dir_all(&dir)?;
    let mut rs = String::from(
        "// Generated by host/build/hello_image.rs: the built-in hello-world image.\n\
         pub(crate) const PARTS: &[Part] = &[\n",
    );
    let mut elves = String::from(
        "/// The executables, for tests: (architecture, bytes).\n\
         #[cfg(test)]\n\
         pub(crate) const EXECUTABLES: &[(&str, &[u8])] = &[\n",
    );
    for p in parts()? {
        let file = format!("{}-{}", p.role, p.arch.unwrap_or("all"));
        std::fs::write(dir.join(&file), &p.bytes)?;
        let bytes = format!("include_bytes!(concat!(env!(\"OUT_DIR\"), \"/hello-world/{file}\"))");
        if p.role == "elf" {
            let _ = writeln!(elves, "    ({:?}, {bytes}),", p.arch.unwrap_or(""));
            continue;
        }
        let arch = match p.arch {
            Some(a) => format!("Some({a:?})"),
            None => "None".into(),
        };
        let _ = writeln!(
            rs,
            "    Part {{ role: Role::{}, arch: {arch}, media_type: {:?}, digest: {:?}, bytes: {bytes} }},",
            capitalise(p.role),
            p.media_type,
            sha256(&p.bytes),
        );
    }
    rs.push_str("];\n");
    rs.push_str(&elves);
    rs.push_str("];\n");
    std::fs::write(out.join("hello_world.rs"), rs)
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}
