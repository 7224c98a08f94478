//! Kernel probe (filled in with the worker).

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProbeError(pub String);

pub fn check() -> Result<(), ProbeError> {
    Ok(())
}
