//! `labelled_enum!`: enums whose discriminants index kernel counters, declared with their labels.

/// Declares a `#[repr(u32)]` enum whose discriminants index kernel counters, together with its
/// metric label, a checked conversion from `u32`, and the list of all values. Counter indices and
/// labels therefore come from one definition.
macro_rules! labelled_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $label:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )*
        }

        impl $name {
            /// Every value, in discriminant order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The label used in metrics, logs and JSON.
            pub const fn label(self) -> &'static str {
                match self {
                    $( $name::$variant => $label, )*
                }
            }

            /// The value with discriminant `value`, if there is one.
            pub const fn from_u32(value: u32) -> Option<Self> {
                match value {
                    $( $value => Some($name::$variant), )*
                    _ => None,
                }
            }

            /// The value labelled `label`, if there is one.
            pub fn from_label(label: &str) -> Option<Self> {
                match label {
                    $( $label => Some($name::$variant), )*
                    _ => None,
                }
            }
        }
    };
}
