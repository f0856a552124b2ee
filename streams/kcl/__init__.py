"""The batch core on a Kinesis Client Library fleet (amazon-kclpy's MultiLangDaemon)."""
