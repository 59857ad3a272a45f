variable "region" {
  type        = string
  description = "AWS region of the store and both fleets."
  default     = "us-east-1"
}

variable "name" {
  type        = string
  description = "Name of this deployment: prefixes roles, fleets and the log group."
  default     = "lazysnap"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,20}$", var.name))
    error_message = "name must be 1-21 characters of a-z, 0-9 and '-'."
  }
}

variable "bucket_name" {
  type        = string
  description = "Name of the store's bucket (globally unique)."
}

variable "store_prefix" {
  type        = string
  description = "Key prefix of the store in the bucket: restore hosts use s3://<bucket>/<store_prefix>."
  default     = "prod"
}

variable "vpc_id" {
  type        = string
  description = "An existing VPC with private subnets."
}

variable "private_subnet_ids" {
  type        = list(string)
  description = "Private subnets (one per availability zone) for both fleets and the internal load balancer."
}

variable "private_route_table_ids" {
  type        = list(string)
  description = "Route tables of those subnets, for the S3 gateway endpoint."
}

variable "lazysnap_package" {
  type        = string
  description = "What npm installs on restore hosts: the URL of a tarball made with npm pack in a lazysnap checkout, or a registry spec."
}

variable "snapshot_ids" {
  type        = list(string)
  description = "Snapshots every restore host serves from boot."
  default     = []
}

variable "metrics_cidr_blocks" {
  type        = list(string)
  description = "Where Prometheus scrapes from."
  default     = []
}
