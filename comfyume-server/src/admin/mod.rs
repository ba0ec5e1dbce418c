//! The instructor's side of the server: the audit log of admin actions, the day book behind per-user
//! usage and the day's charts, the live feed of the admin page, and the page itself (`/admin/`).
//!
//! The admin API's handlers are in [`crate::api::admin`]; this module holds what they keep and show.

pub mod audit;
pub mod day;
pub mod live;
pub mod page;
