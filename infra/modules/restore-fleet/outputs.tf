output "autoscaling_group_name" {
  description = "Name of the restore hosts' autoscaling group (attach scaling policies to it)."
  value       = aws_autoscaling_group.this.name
}

output "launch_template_id" {
  description = "ID of the restore hosts' launch template."
  value       = aws_launch_template.this.id
}

output "security_group_id" {
  description = "Security group of the restore hosts."
  value       = aws_security_group.hosts.id
}

output "log_group_name" {
  description = "CloudWatch log group the hosts ship serve's logs and the bootstrap log to."
  value       = aws_cloudwatch_log_group.this.name
}

output "s3_endpoint_id" {
  description = "ID of the S3 gateway endpoint created here, or null when create_s3_endpoint is false."
  value       = one(aws_vpc_endpoint.s3[*].id)
}

output "metrics_ports" {
  description = "The metrics port range: instance i of snapshot_ids listens on the first port + i."
  value       = { from = var.metrics_port, to = var.metrics_port + var.max_snapshots_per_host - 1 }
}

output "user_data" {
  description = "The rendered bootstrap script (before gzip), for review."
  value       = local.user_data
}
