//! Every configuration file we ship or keep as a fixture goes through `config::load`:
//! `examples/*.toml` and `tests/config/valid/*.toml` must load, and each
//! `tests/config/invalid/*.toml` must fail with the error its first line announces:
//!
//! ```toml
//! # expect: :7: listener[0].backend[1].address: cannot resolve
//! ```
//!
//! The expectation is what follows the file's path in the error, so it pins the line, the key
//! path and the start of the message.

use std::path::{Path, PathBuf};

use ringlb::config::{self, Overrides};

fn toml_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .toml files in {}", dir.display());
    files
}

fn load(path: &Path) -> Result<config::Config, config::ConfigError> {
    make_key_fixtures_private();
    config::load(Some(path), &Overrides::default())
}

/// `[ha]` refuses a key file open to group or others, and git checks files out with the
/// umask's mode (it keeps only the executable bit), so the `*.authkey` files of the valid
/// fixtures and the examples are made 0600 before anything loads them.
fn make_key_fixtures_private() {
    use std::os::unix::fs::PermissionsExt;
    for folder in ["tests/config/valid", "examples"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "authkey") {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
    }
}

#[test]
fn shipped_examples_load() {
    for path in toml_files("examples") {
        let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!config.listeners.is_empty(), "{}", path.display());
    }
}

#[test]
fn valid_fixtures_load_and_their_effective_form_loads_back_the_same() {
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("config-files-effective");
    std::fs::create_dir_all(&scratch).unwrap();
    for path in toml_files("tests/config/valid")
        .into_iter()
        .chain(toml_files("examples"))
    {
        let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
        let effective = scratch.join(path.file_name().unwrap());
        std::fs::write(&effective, config::to_toml(&config)).unwrap();
        let again = load(&effective).unwrap_or_else(|e| panic!("{e} (written from {})", path.display()));
        assert_eq!(again, config, "{}", path.display());
    }
}

#[test]
fn invalid_fixtures_fail_with_the_announced_error() {
    for path in toml_files("tests/config/invalid") {
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: <error>`", path.display()));
        let error = match load(&path) {
            Ok(config) => panic!("{} loaded: {config:?}", path.display()),
            Err(e) => e.to_string(),
        };
        let wanted = format!("{}{expected}", path.display());
        assert!(
            error.starts_with(&wanted),
            "\n  got:    {error}\n  wanted: {wanted}..."
        );
        assert!(!error.contains('\n'), "{error:?} is more than one line");
    }
}
