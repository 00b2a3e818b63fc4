#!/usr/bin/env bash
# Pull invoice totals out of a folder of PDFs into a CSV, one line per invoice.
# Needs jq. Usage: examples/pipeline.sh invoices/ > totals.csv
set -euo pipefail
folder=${1:?usage: pipeline.sh FOLDER}
echo "source,invoice_number,issue_date,currency,gross_total,status"
llamadoc extract "$folder" --schema "$(dirname "$0")/invoice.yaml" --format jsonl \
  | jq -r '[.source, .fields.invoice_number, .fields.issue_date, .fields.currency,
            .fields.gross_total, .status] | @csv'
# llamadoc exits 1 when a document failed: `set -o pipefail` passes that on.
