//! NVMe wire types: NVMe Base Specification 2.0c, NVM Command Set 1.0c and
//! NVMe over Fabrics 1.1a.
//!
//! Everything here is plain data read off or written to the wire. Values that
//! come from a peer (opcodes, status codes, CNS, feature and log identifiers)
//! are *open* newtypes with named constants, so an unknown value is data the
//! engine answers with a status, never undefined behaviour or a panic.
//!
//! Zero-based fields keep the spec's name with a `_z` suffix (`nlb_z`,
//! `qsize_z`) so a reader never has to guess which fields are off by one.

#![forbid(unsafe_code)]

pub mod cqe;
pub mod fabrics;
pub mod features;
pub mod identify;
pub mod log;
pub mod opcode;
pub mod properties;
pub mod sqe;
pub mod status;

pub use cqe::CompletionEntry;
pub use opcode::{AdminOpcode, FabricsType, NvmOpcode};
pub use sqe::SubmissionEntry;
pub use status::{Status, StatusCodeType};

/// Defines an open enum: a transparent newtype over an integer with named
/// constants and a `Debug` that prints the name when it is known.
#[macro_export]
macro_rules! open_enum {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident($int:ty) {
            $( $(#[$cmeta:meta])* $cname:ident = $val:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[repr(transparent)]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        $vis struct $name(pub $int);

        #[allow(missing_docs)]
        impl $name {
            $( $(#[$cmeta])* pub const $cname: Self = Self($val); )*

            /// The spec's name for this value, if it is a known one.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $( Self::$cname => Some(stringify!($cname)), )*
                    _ => None,
                }
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                match self.name() {
                    Some(n) => write!(f, "{}::{}", stringify!($name), n),
                    None => write!(f, "{}({:#x})", stringify!($name), self.0),
                }
            }
        }
    };
}
