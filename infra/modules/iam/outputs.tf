output "restore_host_role_name" {
  description = "Name of the restore hosts' role (modules/restore-fleet attaches its log permissions to it)."
  value       = aws_iam_role.restore_host.name
}

output "restore_host_role_arn" {
  description = "ARN of the restore hosts' role."
  value       = aws_iam_role.restore_host.arn
}

output "restore_host_instance_profile_name" {
  description = "Instance profile of the restore hosts, for modules/restore-fleet."
  value       = aws_iam_instance_profile.restore_host.name
}

output "snapshotter_role_arn" {
  description = "ARN of the snapshotter role, or null when not created."
  value       = one(aws_iam_role.snapshotter[*].arn)
}

output "snapshotter_instance_profile_name" {
  description = "Instance profile of the snapshotter role, or null when not created or EC2 may not assume it."
  value       = one(aws_iam_instance_profile.snapshotter[*].name)
}

output "cache_tier_role_name" {
  description = "Name of the cache tier hosts' role, or null when not created."
  value       = one(aws_iam_role.cache_tier[*].name)
}

output "cache_tier_instance_profile_name" {
  description = "Instance profile of the cache tier hosts, for modules/cache-tier, or null when not created."
  value       = one(aws_iam_instance_profile.cache_tier[*].name)
}

output "object_prefixes" {
  description = "The object ARN patterns the policies are scoped to, by store area."
  value       = local.objects
}
