//! The operator's levers: the HTTP listener (`/metrics`, `/api/v1/`) with its token, the API's
//! requests and answers, the CLI's client, device views, and the lifecycle store (suspensions,
//! moves, checkouts). Imports `observe`, `kernel`, `config` and the leaves.

mod client;
pub mod http;
pub mod lifecycle;
mod proto;
pub mod token;
pub mod views;

pub use client::{Client, Unreachable};
pub use proto::{
    CheckoutBody, CheckoutView, ControlError, DeviceView, EventView, MoveBody, NoteBody, Reply,
    Request,
};
pub use views::{render_views, views};
