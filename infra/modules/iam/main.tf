# Roles for the three kinds of lazysnap hosts, each allowed exactly the S3 calls the code makes
# (store/s3-store.ts) on exactly the store's key prefixes (store/keys.ts, docs/FORMAT.md):
#
#   call (SDK command)   IAM action        restore host               snapshotter                   cache tier
#   GetObject            s3:GetObject      manifests chunks vmstate   manifests chunks              manifests chunks vmstate
#                                          profiles                   (parents, gc)                 profiles
#   HeadObject           s3:GetObject      -                          manifests chunks (dedup,      -
#                                                                     existing ids)
#   PutObject            s3:PutObject      profiles (serve records    manifests chunks vmstate      -
#                                          working sets)
#   DeleteObject         s3:DeleteObject   -                          chunks (gc, optional)         -
#   ListObjectsV2        s3:ListBucket     (see below)                bucket (gc lists chunks/,     (see below)
#                                                                     manifests/)
#
# s3:ListBucket is also what makes S3 answer a GET or HEAD of a missing key with 404 rather than
# 403. lazysnap depends on that 404: a snapshot checks that its id is new and which chunks the
# store already has with HEAD, and serve reads a profile that usually does not exist yet. S3Store
# treats only a 404 as "absent". So every role gets s3:ListBucket on the bucket, without an
# s3:prefix condition: the 404-or-403 decision for a missing key is made without a listing prefix,
# and a prefix condition could turn those 404s back into 403s. It discloses key names (snapshot ids
# and chunk hashes), never contents.
#
# KMS: reading an SSE-KMS object needs kms:Decrypt, writing one kms:GenerateDataKey. Both are
# limited to calls S3 makes on this bucket's behalf (kms:ViaService and the encryption context,
# which with Bucket Keys is the bucket's ARN).

data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  prefix = var.store_prefix == "" ? "" : "${var.store_prefix}/"
  objects = {
    manifests = "${var.bucket_arn}/${local.prefix}manifests/*"
    chunks    = "${var.bucket_arn}/${local.prefix}chunks/*"
    profiles  = "${var.bucket_arn}/${local.prefix}profiles/*"
    vmstate   = "${var.bucket_arn}/${local.prefix}vmstate/*"
  }
  s3_service         = "s3.${data.aws_region.current.id}.${data.aws_partition.current.dns_suffix}"
  encryption_context = [var.bucket_arn, "${var.bucket_arn}/${local.prefix}*"]
  snapshotter_on_ec2 = var.create_snapshotter_role && contains(var.snapshotter_trusted_services, "ec2.amazonaws.com")
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

# ---- restore hosts: lazysnap serve ---------------------------------------------------------------

resource "aws_iam_role" "restore_host" {
  name                 = "${var.name_prefix}-restore-host"
  description          = "lazysnap restore hosts: read snapshots, write working-set profiles"
  assume_role_policy   = data.aws_iam_policy_document.ec2_assume.json
  permissions_boundary = var.permissions_boundary_arn
  tags                 = var.tags
}

data "aws_iam_policy_document" "restore_host" {
  statement {
    sid     = "ReadSnapshots"
    actions = ["s3:GetObject"]
    resources = [
      local.objects.manifests,
      local.objects.chunks,
      local.objects.vmstate,
      local.objects.profiles,
    ]
  }

  statement {
    sid       = "WriteProfiles"
    actions   = ["s3:PutObject"]
    resources = [local.objects.profiles]
  }

  statement {
    sid       = "MissingKeysAre404"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]
  }

  statement {
    sid       = "UseStoreKeyThroughS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.s3_service]
    }

    condition {
      test     = "StringLike"
      variable = "kms:EncryptionContext:aws:s3:arn"
      values   = local.encryption_context
    }
  }
}

resource "aws_iam_role_policy" "restore_host" {
  name   = "lazysnap-store"
  role   = aws_iam_role.restore_host.id
  policy = data.aws_iam_policy_document.restore_host.json
}

resource "aws_iam_instance_profile" "restore_host" {
  name = "${var.name_prefix}-restore-host"
  role = aws_iam_role.restore_host.name
  tags = var.tags
}

# ---- snapshotters: lazysnap snapshot, lazysnap gc ----------------------------------------------

data "aws_iam_policy_document" "snapshotter_assume" {
  count = var.create_snapshotter_role ? 1 : 0

  dynamic "statement" {
    for_each = length(var.snapshotter_trusted_services) > 0 ? [1] : []

    content {
      actions = ["sts:AssumeRole"]

      principals {
        type        = "Service"
        identifiers = var.snapshotter_trusted_services
      }
    }
  }

  dynamic "statement" {
    for_each = length(var.snapshotter_trusted_role_arns) > 0 ? [1] : []

    content {
      actions = ["sts:AssumeRole"]

      principals {
        type        = "AWS"
        identifiers = var.snapshotter_trusted_role_arns
      }
    }
  }
}

resource "aws_iam_role" "snapshotter" {
  count = var.create_snapshotter_role ? 1 : 0

  name                 = "${var.name_prefix}-snapshotter"
  description          = "lazysnap snapshotters: write snapshots${var.snapshotter_can_gc ? ", delete unreferenced chunks" : ""}"
  assume_role_policy   = data.aws_iam_policy_document.snapshotter_assume[0].json
  permissions_boundary = var.permissions_boundary_arn
  tags                 = var.tags

  lifecycle {
    precondition {
      condition     = length(var.snapshotter_trusted_services) + length(var.snapshotter_trusted_role_arns) > 0
      error_message = "The snapshotter role needs someone to assume it: set snapshotter_trusted_services or snapshotter_trusted_role_arns."
    }
  }
}

data "aws_iam_policy_document" "snapshotter" {
  count = var.create_snapshotter_role ? 1 : 0

  statement {
    sid     = "ReadStore"
    actions = ["s3:GetObject"]
    resources = [
      local.objects.manifests,
      local.objects.chunks,
    ]
  }

  statement {
    sid     = "WriteSnapshots"
    actions = ["s3:PutObject"]
    resources = [
      local.objects.manifests,
      local.objects.chunks,
      local.objects.vmstate,
    ]
  }

  statement {
    sid       = "ListForGcAndMissingKeysAre404"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]
  }

  dynamic "statement" {
    for_each = var.snapshotter_can_gc ? [1] : []

    content {
      sid       = "DeleteUnreferencedChunks"
      actions   = ["s3:DeleteObject"]
      resources = [local.objects.chunks]
    }
  }

  statement {
    sid       = "UseStoreKeyThroughS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.s3_service]
    }

    condition {
      test     = "StringLike"
      variable = "kms:EncryptionContext:aws:s3:arn"
      values   = local.encryption_context
    }
  }
}

resource "aws_iam_role_policy" "snapshotter" {
  count = var.create_snapshotter_role ? 1 : 0

  name   = "lazysnap-store"
  role   = aws_iam_role.snapshotter[0].id
  policy = data.aws_iam_policy_document.snapshotter[0].json
}

resource "aws_iam_instance_profile" "snapshotter" {
  count = local.snapshotter_on_ec2 ? 1 : 0

  name = "${var.name_prefix}-snapshotter"
  role = aws_iam_role.snapshotter[0].name
  tags = var.tags
}

# ---- cache tier: nginx and its signing S3 origin ------------------------------------------------

resource "aws_iam_role" "cache_tier" {
  count = var.create_cache_tier_role ? 1 : 0

  name                 = "${var.name_prefix}-cache-tier"
  description          = "lazysnap HTTP cache tier: read snapshots on behalf of restore hosts"
  assume_role_policy   = data.aws_iam_policy_document.ec2_assume.json
  permissions_boundary = var.permissions_boundary_arn
  tags                 = var.tags
}

data "aws_iam_policy_document" "cache_tier" {
  count = var.create_cache_tier_role ? 1 : 0

  statement {
    sid     = "ReadSnapshots"
    actions = ["s3:GetObject"]
    resources = [
      local.objects.manifests,
      local.objects.chunks,
      local.objects.vmstate,
      local.objects.profiles,
    ]
  }

  statement {
    sid       = "MissingKeysAre404"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]
  }

  statement {
    sid       = "DecryptThroughS3"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.s3_service]
    }

    condition {
      test     = "StringLike"
      variable = "kms:EncryptionContext:aws:s3:arn"
      values   = local.encryption_context
    }
  }
}

resource "aws_iam_role_policy" "cache_tier" {
  count = var.create_cache_tier_role ? 1 : 0

  name   = "lazysnap-store"
  role   = aws_iam_role.cache_tier[0].id
  policy = data.aws_iam_policy_document.cache_tier[0].json
}

resource "aws_iam_instance_profile" "cache_tier" {
  count = var.create_cache_tier_role ? 1 : 0

  name = "${var.name_prefix}-cache-tier"
  role = aws_iam_role.cache_tier[0].name
  tags = var.tags
}
