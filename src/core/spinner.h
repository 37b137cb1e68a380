/* A progress spinner on stderr, drawn by a background thread so it keeps moving while the main
 * thread is blocked in C (an HTTP transfer, a child process). The thread only writes to fd 2. */
#ifndef GALLEY_SPINNER_H
#define GALLEY_SPINNER_H

/* Starts (or relabels) the spinner: "<frame> <label> <elapsed>s", redrawn every 100 ms. */
void galley_spinner_start(const char *label);

/* Changes the label of a running spinner (its clock goes on). */
void galley_spinner_label(const char *label);

/* Stops the spinner and clears its line. Safe to call when none is running. */
void galley_spinner_stop(void);

/* Writes text to stderr without garbling the spinner line (clear, write, redraw). */
void galley_spinner_write(const char *text, size_t len);

#endif
