package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/rekeyhq/rekey"

	"github.com/spf13/cobra"
)

func (c *cli) encryptCommand() *cobra.Command {
	var key, in, out, aad string
	cmd := &cobra.Command{
		Use:   "encrypt --key NAME [--in F] [--out F]",
		Short: "Seal data under a new DEK (envelope encryption)",
		Long: `Seal a file (or stdin) under a new DEK of the key. The output is a rekey
envelope: it names the DEK it was sealed under, so it still opens after any
number of root-key rotations. Data is processed in 64 KiB chunks: memory use
does not grow with the size of the file. --out is written to a temporary
file and renamed into place only when complete (mode 0600).`,
		Example: "  rekey encrypt --key payments --in report.pdf --out report.pdf.rekey",
		Args:    exactArgs(0, "none (use --in/--out)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if key == "" {
				return usagef("--key is required: the root key whose new DEK seals the data")
			}
			// Inputs and the --out target are checked before the store is
			// opened: a DEK made for a run that then fails on a bad path
			// would stay behind, orphaned.
			if err := checkPaths(in, out); err != nil {
				return err
			}
			a, err := c.open(cmd.Context())
			if err != nil {
				return err
			}
			return c.transform(cmd.Context(), in, out, func(ctx context.Context, dst io.Writer, src io.Reader) error {
				id, err := a.Keyring.SealStream(ctx, key, dst, src, []byte(aad))
				if err == nil {
					a.Logger.Debug("sealed", "dek_id", id, "key", key)
				}
				return err
			})
		},
	}
	cmd.Flags().StringVar(&key, "key", "", "root key (required)")
	cmd.Flags().StringVar(&in, "in", "-", "input file, - for stdin")
	cmd.Flags().StringVar(&out, "out", "-", "output file, - for stdout")
	cmd.Flags().StringVar(&aad, "aad", "", "associated data bound to the envelope (must be given again to decrypt)")
	return cmd
}

func (c *cli) decryptCommand() *cobra.Command {
	var in, out, aad string
	cmd := &cobra.Command{
		Use:   "decrypt [--in F] [--out F]",
		Short: "Open data sealed by 'rekey encrypt'",
		Long: `Open a rekey envelope: find its DEK, unwrap it under the version it is
wrapped under now, and decrypt chunk by chunk, authenticating each. --out is
written to a temporary file and renamed into place only when the whole
envelope authenticated (mode 0600); on stdout, output stops at the first
chunk that does not authenticate and the exit code is 1.`,
		Example: "  rekey decrypt --in report.pdf.rekey --out report.pdf",
		Args:    exactArgs(0, "none (use --in/--out)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkPaths(in, out); err != nil {
				return err
			}
			a, err := c.open(cmd.Context())
			if err != nil {
				return err
			}
			return c.transform(cmd.Context(), in, out, func(ctx context.Context, dst io.Writer, src io.Reader) error {
				id, err := a.Keyring.OpenStream(ctx, dst, src, []byte(aad))
				if errors.Is(err, rekey.ErrDEKNotFound) {
					return fmt.Errorf("--in: the envelope names DEK %s, which this store (%s) does not have: was it sealed with another home or config? Run decrypt with that one's --config or $REKEY_HOME: %w",
						id, a.ConfigPath, err)
				}
				if err == nil {
					a.Logger.Debug("opened", "dek_id", id)
				}
				return err
			})
		},
	}
	cmd.Flags().StringVar(&in, "in", "-", "input file, - for stdin")
	cmd.Flags().StringVar(&out, "out", "-", "output file, - for stdout")
	cmd.Flags().StringVar(&aad, "aad", "", "associated data given to encrypt")
	return cmd
}

// checkPaths refuses, before anything is opened or created, an --in that
// is not a readable regular file (or -) and an --out that is a directory
// or in a directory that does not exist. Errors start with the flag.
func checkPaths(in, out string) error {
	if in != "-" {
		st, err := os.Stat(in)
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("--in: %w: check the path (or give - for stdin)", err)
		}
		if err != nil {
			return fmt.Errorf("--in: %w", err)
		}
		if st.IsDir() {
			return fmt.Errorf("--in: %s is a directory: give a file (or - for stdin)", in)
		}
		f, err := os.Open(in)
		if err != nil {
			return fmt.Errorf("--in: %w", err)
		}
		f.Close()
	}
	if out != "-" {
		if st, err := os.Stat(out); err == nil && st.IsDir() {
			return fmt.Errorf("--out: %s is a directory: give a file name (or - for stdout)", out)
		}
		dir := filepath.Dir(out)
		st, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("--out: directory %s: %w", dir, err)
		}
		if !st.IsDir() {
			return fmt.Errorf("--out: %s is not a directory", dir)
		}
		if in != "-" && sameFile(in, out) {
			return fmt.Errorf("--out: %s is also --in: write to another file", out)
		}
	}
	return nil
}

// inputError prefixes a read error of the input with --in (an error of
// the library, which names its DEK, is returned as is).
func inputError(err error, in string) error {
	var pe *fs.PathError
	if errors.As(err, &pe) && (in == "-" || pe.Path == in) {
		return fmt.Errorf("--in: %w", err)
	}
	return err
}

// sameFile reports whether a and b name the same existing file.
func sameFile(a, b string) bool {
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	return err == nil && os.SameFile(sa, sb)
}

// transform runs fn from in to out. A file output goes to a temporary file
// beside it (0600), is synced, and renamed over out only when fn succeeded.
func (c *cli) transform(ctx context.Context, in, out string, fn func(context.Context, io.Writer, io.Reader) error) error {
	var src io.Reader = c.stdin
	if in != "-" {
		f, err := os.Open(in)
		if err != nil {
			return fmt.Errorf("--in: %w", err)
		}
		defer f.Close()
		src = f
	}
	src = bufio.NewReaderSize(src, 256<<10)
	if out == "-" {
		w := bufio.NewWriterSize(c.stdout, 256<<10)
		if err := fn(ctx, w, src); err != nil {
			w.Flush()
			return inputError(err, in)
		}
		return w.Flush()
	}
	dir := filepath.Dir(out)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(out)+".tmp-*")
	if err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	w := bufio.NewWriterSize(tmp, 256<<10)
	if err := fn(ctx, w, src); err != nil {
		return inputError(err, in)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	committed = true
	return nil
}
