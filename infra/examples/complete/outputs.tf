output "store_urls" {
  description = "The restore hosts' --store list, in order."
  value = [
    "${module.cache_tier.url}${local.prefix_path}",
    "s3://${module.store.bucket_name}${local.prefix_path}",
  ]
}

output "snapshot_store_url" {
  description = "Where snapshotters write (lazysnap snapshot --store ...) with the snapshotter role."
  value       = "s3://${module.store.bucket_name}${local.prefix_path}"
}

output "snapshotter_role_arn" {
  description = "The role snapshotters assume."
  value       = module.iam.snapshotter_role_arn
}

output "restore_fleet_autoscaling_group" {
  description = "The restore hosts' autoscaling group."
  value       = module.restore_fleet.autoscaling_group_name
}

output "log_group_name" {
  description = "Where the restore hosts' logs go."
  value       = module.restore_fleet.log_group_name
}
