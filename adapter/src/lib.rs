//! RabbitMQ adapter for socketioxide (work in progress, see issue 3).
