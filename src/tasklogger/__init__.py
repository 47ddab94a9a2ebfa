"""tasklogger: durable, exactly-once audit logs of AI-agent tasks, consumed from a Redis Stream."""

__version__ = "0.1.0"
