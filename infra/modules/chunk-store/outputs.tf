output "bucket_name" {
  description = "The bucket's name, for s3://<bucket_name>/<prefix> store URLs."
  value       = aws_s3_bucket.this.id
}

output "bucket_arn" {
  description = "The bucket's ARN, for the iam module."
  value       = aws_s3_bucket.this.arn
}

output "bucket_regional_domain_name" {
  description = "The bucket's regional endpoint host name."
  value       = aws_s3_bucket.this.bucket_regional_domain_name
}

output "kms_key_arn" {
  description = "The KMS key the bucket's objects are encrypted with (created here or passed in). Readers need kms:Decrypt on it, writers kms:GenerateDataKey."
  value       = local.kms_key_arn
}

output "versioning_enabled" {
  description = "Whether the bucket keeps object versions (on with versioning_enabled or replication)."
  value       = local.versioning
}

output "replication_role_arn" {
  description = "The role S3 assumes to replicate, or null without replication."
  value       = one(aws_iam_role.replication[*].arn)
}
