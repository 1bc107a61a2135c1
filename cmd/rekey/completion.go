package main

import (
	"github.com/spf13/cobra"
)

// completionCommand replaces cobra's default completion command: one
// command taking the shell as its argument, so that an unknown shell is a
// usage error instead of a help page and exit 0.
func (c *cli) completionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "completion bash|zsh|fish|powershell",
		Short: "Print the shell completion script for bash, zsh, fish or powershell",
		Long: `Print the completion script of a shell to stdout (cobra's generator). The
script asks rekey itself what to complete, so it stays right as commands and
flags change. Install it once:

  bash:  rekey completion bash | sudo tee /etc/bash_completion.d/rekey >/dev/null
         (or: echo 'source <(rekey completion bash)' >> ~/.bashrc; needs bash-completion)
  zsh:   rekey completion zsh > "${fpath[1]}/_rekey"   (then start a new shell)
  fish:  rekey completion fish > ~/.config/fish/completions/rekey.fish
  powershell:  rekey completion powershell | Out-String | Invoke-Expression`,
		Example:               "  rekey completion bash > /etc/bash_completion.d/rekey",
		ValidArgs:             []string{"bash", "zsh", "fish", "powershell"},
		DisableFlagsInUseLine: true,
		Args:                  exactArgs(1, "the shell: bash, zsh, fish or powershell"),
		RunE: func(cmd *cobra.Command, args []string) error {
			root := cmd.Root()
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(c.stdout, true)
			case "zsh":
				return root.GenZshCompletion(c.stdout)
			case "fish":
				return root.GenFishCompletion(c.stdout, true)
			case "powershell":
				return root.GenPowerShellCompletionWithDesc(c.stdout)
			}
			return usagef("completion %q: rekey completes bash, zsh, fish and powershell", args[0])
		},
	}
}
