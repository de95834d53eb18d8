//! Serving hostile networks (feature `net`): listeners with a connection
//! cap that shed silent connections first and back off when descriptors run
//! out ([`accept`]), and per-connection timers that close connections which
//! never ask anything or stop asking ([`idle`]). The proxy and the control
//! plane's servers share them.

pub mod accept;
pub mod idle;
pub mod retry;
