//! What a run's entrypoint is given besides its files (`docs/contract.md#run`): its arguments,
//! its variables (a secret by name only) and the hash's excludes; part of a run's record and of
//! its idempotency key.

use serde::{Deserialize, Serialize};

/// Why an argument or a variable cannot be given to a run's entrypoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvocationError {
    /// The variable's name is not `[A-Za-z_][A-Za-z0-9_]*`, or is reserved.
    #[error("invalid variable name {name:?}: {reason}")]
    BadName {
        /// The name as given.
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A value or an argument holds a NUL byte, which no process argument or environment can
    /// carry.
    #[error("{what} holds a NUL byte, which no command line or environment can carry")]
    Nul {
        /// `the value of NAME`, or `argument N`.
        what: String,
    },
    /// The same variable was given twice.
    #[error("the variable {name} is given twice")]
    Duplicate {
        /// The name.
        name: String,
    },
}

/// A variable set for a run's entrypoint (`-e NAME=VALUE`, or `-e NAME` for a secret whose
/// value comes from the controller's environment when the run executes). A secret's value is
/// never part of the record: not stored, not logged, not serialized.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "EnvVarFields", into = "EnvVarFields")]
pub struct EnvVar {
    name: String,
    value: Option<String>,
}

/// How an [`EnvVar`] is serialized: `{"name", "value", "secret"}`, `value` null for a secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EnvVarFields {
    name: String,
    value: Option<String>,
    #[serde(default)]
    secret: bool,
}

impl TryFrom<EnvVarFields> for EnvVar {
    type Error = InvocationError;
    fn try_from(fields: EnvVarFields) -> Result<Self, Self::Error> {
        match (fields.value, fields.secret) {
            (Some(value), false) => Self::public(&fields.name, &value),
            _ => Self::secret(&fields.name),
        }
    }
}

impl From<EnvVar> for EnvVarFields {
    fn from(var: EnvVar) -> Self {
        Self {
            secret: var.value.is_none(),
            name: var.name,
            value: var.value,
        }
    }
}

impl EnvVar {
    /// The prefix of the variables testfleet sets itself (`TESTFLEET_RUN_ID`, …); no `-e` may
    /// use it.
    pub const RESERVED_PREFIX: &str = "TESTFLEET_";

    /// A variable whose value is recorded with the run.
    ///
    /// # Errors
    /// [`InvocationError::BadName`], or [`InvocationError::Nul`] for a value with a NUL byte.
    pub fn public(name: &str, value: &str) -> Result<Self, InvocationError> {
        check_env_name(name)?;
        if value.contains('\0') {
            return Err(InvocationError::Nul {
                what: format!("the value of {name}"),
            });
        }
        Ok(Self {
            name: name.to_owned(),
            value: Some(value.to_owned()),
        })
    }

    /// A secret: only its name is recorded; its value is read when the run executes.
    ///
    /// # Errors
    /// [`InvocationError::BadName`].
    pub fn secret(name: &str) -> Result<Self, InvocationError> {
        check_env_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            value: None,
        })
    }

    /// The variable's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The recorded value; `None` for a secret.
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// Whether the value is a secret, read from the environment when the run executes.
    pub fn is_secret(&self) -> bool {
        self.value.is_none()
    }
}

/// Names as POSIX shells and PowerShell both take them: `[A-Za-z_][A-Za-z0-9_]*`, not
/// [`EnvVar::RESERVED_PREFIX`].
fn check_env_name(name: &str) -> Result<(), InvocationError> {
    let refuse = |reason| {
        Err(InvocationError::BadName {
            name: name.to_owned(),
            reason,
        })
    };
    let mut bytes = name.bytes();
    match bytes.next() {
        None => return refuse("it is empty"),
        Some(first) if !(first.is_ascii_alphabetic() || first == b'_') => {
            return refuse("it must start with a letter or '_'");
        }
        Some(_) => {}
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return refuse("only letters, digits and '_' are allowed");
    }
    if name
        .to_ascii_uppercase()
        .starts_with(EnvVar::RESERVED_PREFIX)
    {
        return refuse("names starting with TESTFLEET_ are set by testfleet itself");
    }
    Ok(())
}

/// What a run's entrypoint is given besides the files (`docs/contract.md#run`): its arguments,
/// its variables, and the `--exclude` patterns its hash left out. Part of the run record; the
/// arguments and the variables are part of the idempotency key ([`Invocation::same_key`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    /// The arguments after `--`, passed to the entrypoint exactly.
    #[serde(default)]
    pub args: Vec<String>,
    /// The variables, in the order given.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// The `--exclude` patterns of the hash (besides `.testfleetignore` and the default
    /// `.git/`), needed to hash the directory again the same way.
    #[serde(default)]
    pub excludes: Vec<String>,
}

impl Invocation {
    /// Checks what no [`EnvVar`] can check alone: no argument with a NUL byte, no variable
    /// given twice.
    ///
    /// # Errors
    /// [`InvocationError::Nul`], [`InvocationError::Duplicate`].
    pub fn check(&self) -> Result<(), InvocationError> {
        if let Some(idx) = self.args.iter().position(|arg| arg.contains('\0')) {
            return Err(InvocationError::Nul {
                what: format!("argument {}", idx + 1),
            });
        }
        let mut names: Vec<&str> = self.env.iter().map(EnvVar::name).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(InvocationError::Duplicate {
                name: pair[0].to_owned(),
            });
        }
        Ok(())
    }

    /// Whether a run with `other` does the same work as one with `self`, with the same test
    /// directory hash on the same machine: the same arguments, and the same variables (names,
    /// whether each is a secret, and the recorded values), whatever their order. A secret's
    /// value is never recorded, so it cannot tell two runs apart.
    pub fn same_key(&self, other: &Invocation) -> bool {
        let sorted = |env: &[EnvVar]| {
            let mut env = env.to_vec();
            env.sort_by(|a, b| a.name.cmp(&b.name));
            env
        };
        self.args == other.args && sorted(&self.env) == sorted(&other.env)
    }
}
