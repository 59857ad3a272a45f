variable "name_prefix" {
  type        = string
  description = "Prefix of the role and instance profile names, e.g. \"prod-lazysnap\"."

  validation {
    condition     = can(regex("^[A-Za-z0-9+=,.@_-]{1,32}$", var.name_prefix))
    error_message = "name_prefix must be 1-32 characters valid in IAM role names."
  }
}

variable "bucket_arn" {
  type        = string
  description = "ARN of the store's bucket (the chunk-store module's bucket_arn output)."

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_arn))
    error_message = "bucket_arn must be an S3 bucket ARN: arn:aws:s3:::<bucket>."
  }
}

variable "store_prefix" {
  type        = string
  description = "Key prefix of the store inside the bucket: the <prefix> of s3://<bucket>/<prefix>, without slashes at either end. \"\" for a store at the bucket root. Every object permission is scoped to <prefix>/manifests/*, <prefix>/chunks/*, <prefix>/profiles/* and <prefix>/vmstate/*."
  default     = ""

  validation {
    condition     = var.store_prefix == "" || can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", var.store_prefix))
    error_message = "store_prefix must be \"\" or segments of [A-Za-z0-9._-] joined by single slashes, with no leading or trailing slash."
  }
}

variable "kms_key_arn" {
  type        = string
  description = "ARN of the KMS key the bucket is encrypted with (the chunk-store module's kms_key_arn output)."

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "create_snapshotter_role" {
  type        = bool
  description = "Create the snapshotter role (writes snapshots; may run lazysnap gc)."
  default     = true
}

variable "snapshotter_can_gc" {
  type        = bool
  description = "Let the snapshotter role delete chunks (lazysnap gc). Without it the role can only add to the store."
  default     = true
}

variable "snapshotter_trusted_services" {
  type        = list(string)
  description = "AWS services that may assume the snapshotter role, e.g. [\"ec2.amazonaws.com\"] for snapshot hosts (an instance profile is created when EC2 is listed)."
  default     = ["ec2.amazonaws.com"]
}

variable "snapshotter_trusted_role_arns" {
  type        = list(string)
  description = "IAM roles that may assume the snapshotter role (a CI runner's role, a platform controller)."
  default     = []

  validation {
    condition     = alltrue([for a in var.snapshotter_trusted_role_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/", a))])
    error_message = "snapshotter_trusted_role_arns must be IAM role ARNs."
  }
}

variable "create_cache_tier_role" {
  type        = bool
  description = "Create the role of the HTTP cache tier's hosts (modules/cache-tier): reads what restore hosts read, writes nothing."
  default     = true
}

variable "permissions_boundary_arn" {
  type        = string
  description = "Optional permissions boundary attached to every role the module creates."
  default     = null
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource the module creates."
  default     = {}
}
