# Every lazysnap module wired together in an existing VPC: the store's bucket, the roles, the HTTP
# cache tier, and a fleet of restore hosts that read through the cache tier first, then S3.

data "aws_vpc" "this" {
  id = var.vpc_id
}

locals {
  # "" (a store at the bucket root) or "/<prefix>", appended to both store URLs.
  prefix_path = var.store_prefix == "" ? "" : "/${var.store_prefix}"
}

module "store" {
  source = "../../modules/chunk-store"

  bucket_name = var.bucket_name
}

module "iam" {
  source = "../../modules/iam"

  name_prefix  = var.name
  bucket_arn   = module.store.bucket_arn
  store_prefix = var.store_prefix
  kms_key_arn  = module.store.kms_key_arn
}

module "cache_tier" {
  source = "../../modules/cache-tier"

  name                  = var.name
  vpc_id                = var.vpc_id
  subnet_ids            = var.private_subnet_ids
  client_cidr_blocks    = [data.aws_vpc.this.cidr_block]
  bucket_name           = module.store.bucket_name
  instance_profile_name = module.iam.cache_tier_instance_profile_name
}

module "restore_fleet" {
  source = "../../modules/restore-fleet"

  name                  = var.name
  vpc_id                = var.vpc_id
  subnet_ids            = var.private_subnet_ids
  route_table_ids       = var.private_route_table_ids
  instance_profile_name = module.iam.restore_host_instance_profile_name
  instance_role_name    = module.iam.restore_host_role_name

  # The cache tier first: the first store that delivers verified bytes wins, errors fall through.
  store_urls = [
    "${module.cache_tier.url}${local.prefix_path}",
    "s3://${module.store.bucket_name}${local.prefix_path}",
  ]
  http_store_cidr_blocks = [data.aws_vpc.this.cidr_block]
  metrics_cidr_blocks    = var.metrics_cidr_blocks
  lazysnap_package       = var.lazysnap_package
  snapshot_ids           = var.snapshot_ids
}
