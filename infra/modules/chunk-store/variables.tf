variable "bucket_name" {
  type        = string
  description = "Name of the bucket that holds the snapshot store (manifests/, chunks/, profiles/, vmstate/ under an optional key prefix)."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name)) && !can(regex("\\.\\.", var.bucket_name))
    error_message = "bucket_name must be an S3 bucket name: 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit."
  }
}

variable "kms_key_arn" {
  type        = string
  description = "ARN of an existing customer managed KMS key to encrypt the bucket with. When null, the module creates a key (with rotation) for this bucket."
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>), not an alias."
  }
}

variable "kms_key_deletion_window_days" {
  type        = number
  description = "Waiting period before a key created by this module is deleted after destroy (7-30 days). Deleting the key makes every object unreadable."
  default     = 30

  validation {
    condition     = var.kms_key_deletion_window_days >= 7 && var.kms_key_deletion_window_days <= 30
    error_message = "kms_key_deletion_window_days must be between 7 and 30."
  }
}

variable "versioning_enabled" {
  type        = bool
  description = <<-EOT
    Keep object versions. Off by default: chunks are content-addressed and immutable (a rewrite
    stores identical bytes), manifests are written once per id, and profiles are rewritten by
    every recording, so versions would mostly keep copies of identical chunks, superseded profiles,
    and chunks that `lazysnap gc` deleted. Turn it on to recover from accidental deletes; replication
    turns it on regardless, since S3 requires it there. Noncurrent versions then expire after
    noncurrent_version_expiration_days.
  EOT
  default     = false
}

variable "noncurrent_version_expiration_days" {
  type        = number
  description = "With versioning on, days after which a noncurrent version (an overwritten profile, a deleted chunk) is removed for good."
  default     = 7

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1
    error_message = "noncurrent_version_expiration_days must be at least 1."
  }
}

variable "abort_incomplete_multipart_days" {
  type        = number
  description = "Days after which an unfinished multipart upload is aborted and its parts deleted. lazysnap writes single PUTs, but other tools (aws s3 cp of a large vmstate) use multipart, and abandoned parts are billed until removed."
  default     = 1

  validation {
    condition     = var.abort_incomplete_multipart_days >= 1
    error_message = "abort_incomplete_multipart_days must be at least 1."
  }
}

variable "replication" {
  type = object({
    destination_bucket_arn  = string
    destination_kms_key_arn = string
    storage_class           = optional(string, "STANDARD")
  })
  description = "Optional replication of every object to a bucket in another region or account (disaster recovery, or restore fleets elsewhere). The destination bucket must exist with versioning enabled; replicas are encrypted with destination_kms_key_arn. Deletions made by lazysnap gc are replicated as delete markers. Null disables replication."
  default     = null

  validation {
    condition = var.replication == null ? true : (
      can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.replication.destination_bucket_arn)) &&
      can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/", var.replication.destination_kms_key_arn))
    )
    error_message = "replication needs a destination bucket ARN (arn:aws:s3:::name) and a destination KMS key ARN."
  }
}

variable "force_destroy" {
  type        = bool
  description = "Allow terraform destroy to delete a bucket that still holds objects. Leave false outside test environments."
  default     = false
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource the module creates."
  default     = {}
}
